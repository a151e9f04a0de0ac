//! A frozen pass (`Ctx::frozen`, the discriminator in the generator step) gives the same
//! output and input gradient as a normal one, and no gradient for the parameters.

use atelier_nets::discriminators::{NLayerConfig, NLayerDiscriminator};
use atelier_nets::{Ctx, NormKind, SeededVarMap};
use candle_core::{Device, Tensor, Var};

#[test]
fn frozen_discriminator_passes_gradients_to_its_input_only() {
    let dev = Device::Cpu;
    let vm = SeededVarMap::new(3);
    let d = NLayerDiscriminator::new(
        NLayerConfig {
            input_nc: 3,
            ndf: 16,
            n_layers: 3,
            norm: NormKind::Instance,
        },
        vm.builder(&dev),
    )
    .unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 40, 40), &dev).unwrap()).unwrap();
    let weights = vm.varmap().all_vars();
    assert!(weights.len() >= 8, "{} parameters", weights.len());
    // The biases of the convolutions before an instance norm (`model.{2,5,8}.bias`) change
    // nothing; the one-op discriminator gives them no gradient (see `chain.rs`).
    let before_norm = vm
        .varmap()
        .data()
        .lock()
        .unwrap()
        .keys()
        .filter(|k| ["model.2.bias", "model.5.bias", "model.8.bias"].contains(&k.as_str()))
        .count();
    assert_eq!(before_norm, 3);
    let run = |frozen: bool| {
        let mut ctx = Ctx::train();
        ctx.frozen = frozen;
        let y = d.forward(x.as_tensor(), &mut ctx).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(x.as_tensor()).expect("input gradient").clone();
        let with_grad = weights
            .iter()
            .filter(|w| grads.get(w.as_tensor()).is_some())
            .count();
        (y, dx, with_grad)
    };
    let (y, dx, n) = run(false);
    let (yf, dxf, nf) = run(true);
    assert_eq!(
        n,
        weights.len() - before_norm,
        "a normal pass gives every parameter that matters a gradient"
    );
    assert_eq!(nf, 0, "a frozen pass gives no parameter a gradient");
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&y, &yf), 0.0);
    let scale = dx
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(scale > 0.0);
    assert!(diff(&dx, &dxf) <= 1e-6 * scale, "input gradients differ");
}
