//! int8 calibration of a compiled generator: uncalibrated convolutions derive their smoothing
//! factors from every input; a calibration pass fixes them once (the first one wins), and a
//! network calibrated on an image computes exactly what the uncalibrated one does on it.

use atelier_nets::resnet::ResnetConfig;
use atelier_nets::{Arch, Compiled, Ctx, Network, Precision};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

fn image(side: usize, seed: u32, gain: f32) -> Vec<f32> {
    (0..3 * side * side)
        .map(|i| {
            let t = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as f32 / u32::MAX as f32;
            let smooth = ((i % side) as f32 / side as f32 - 0.5) * 1.5;
            ((smooth + 0.5 * (t - 0.5)) * gain).clamp(-1.0, 1.0)
        })
        .collect()
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse).log10()
}

#[test]
fn calibration_fixes_the_int8_factors_once() {
    if !atelier_nets::has_int8() {
        eprintln!("skipped: no AVX512_VNNI here, int8 runs fp32");
        return;
    }
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let arch = Arch::Resnet(ResnetConfig {
        ngf: 16,
        n_blocks: 2,
        ..ResnetConfig::default()
    });
    let net = Network::new(arch, vb).unwrap();
    let side = 64;
    let (a, b) = (image(side, 1, 1.0), image(side, 7, 0.2));
    let run = |c: &Compiled, x: &[f32]| c.forward_chw(x, side, side, &mut Ctx::eval()).unwrap().0;
    let f32net = Compiled::new(&net, Precision::F32).unwrap().unwrap();
    let reference = run(&f32net, &b);

    let dynamic = Compiled::new(&net, Precision::Int8).unwrap().unwrap();
    assert!(!dynamic.is_calibrated());
    let on_b = run(&dynamic, &b);
    assert!(!dynamic.is_calibrated(), "an ordinary pass calibrated");

    let calibrated = Compiled::new(&net, Precision::Int8).unwrap().unwrap();
    calibrated.calibrate(&a, side, side).unwrap();
    assert!(calibrated.is_calibrated());
    let after_a = run(&calibrated, &b);
    assert!(
        after_a != on_b,
        "calibrating on another image changed nothing"
    );
    calibrated.calibrate(&b, side, side).unwrap();
    assert!(
        run(&calibrated, &b) == after_a,
        "a second calibration replaced the first"
    );

    let own = Compiled::new(&net, Precision::Int8).unwrap().unwrap();
    own.calibrate(&b, side, side).unwrap();
    assert!(
        run(&own, &b) == on_b,
        "calibrated on b, b should run as uncalibrated"
    );

    for (name, y) in [("uncalibrated", &on_b), ("calibrated on a", &after_a)] {
        let db = psnr(y, &reference);
        assert!(db > 30.0, "{name}: {db:.1} dB against fp32");
    }
}
