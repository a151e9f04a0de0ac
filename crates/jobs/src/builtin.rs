//! The built-in styles, compiled into the binary so that a fresh `atelier serve` has
//! something to show. Each is a model file in `models/` trained by `atelier train`; its card
//! (data, licence, steps, hardware) is inside the file and `models/README.md` tells how it was
//! made.

/// `(name, title, file)` of every embedded model (their cards and KIDs: `models/README.md`).
pub const EMBEDDED: &[(&str, &str, &[u8])] = &[
    (
        "ukiyoe",
        "Ukiyo-e",
        include_bytes!("../../../models/ukiyoe.safetensors"),
    ),
    (
        "ukiyoe_light",
        "Ukiyo-e (light)",
        include_bytes!("../../../models/ukiyoe_light.safetensors"),
    ),
    (
        "monet",
        "Monet",
        include_bytes!("../../../models/monet.safetensors"),
    ),
    (
        "monet_light",
        "Monet (light)",
        include_bytes!("../../../models/monet_light.safetensors"),
    ),
    (
        "cezanne",
        "Cézanne",
        include_bytes!("../../../models/cezanne.safetensors"),
    ),
    (
        "cezanne_light",
        "Cézanne (light)",
        include_bytes!("../../../models/cezanne_light.safetensors"),
    ),
    (
        "vangogh",
        "Van Gogh",
        include_bytes!("../../../models/vangogh.safetensors"),
    ),
    (
        "vangogh_light",
        "Van Gogh (light)",
        include_bytes!("../../../models/vangogh_light.safetensors"),
    ),
];

/// The display title of built-in model `name`, if it has one.
pub fn title(name: &str) -> Option<&'static str> {
    EMBEDDED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, t, _)| *t)
}
