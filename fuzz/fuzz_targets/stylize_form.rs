#![no_main]
// See atelier_fuzzing::stylize_form.
libfuzzer_sys::fuzz_target!(
    init: atelier_fuzzing::init_stylize_form(),
    |data: &[u8]| atelier_fuzzing::stylize_form(data)
);
