//! Every kernel against the plain reference convolution (`conv::reference`, f64
//! accumulation, PyTorch semantics) on random shapes: odd sizes, stride 2, reflect and zero
//! padding, transposed convolutions with output padding, every instruction set this CPU has.

use atelier_kernels::conv::reference;
use atelier_kernels::{Act, Conv, ConvSpec, Depthwise, Isa, Map, PadMode, PlanarConv, Precision};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(Isa::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512 { bf16: false });
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                v.push(Isa::Avx512 { bf16: true });
            }
        }
    }
    v
}

/// Max |a − b| relative to max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn cases() -> Vec<(ConvSpec, usize, usize)> {
    let z = PadMode::Zero;
    let r = PadMode::Reflect;
    vec![
        (ConvSpec::new(3, 32, 7).pad(3, r), 13, 11),
        (ConvSpec::new(5, 17, 3).pad(1, r), 9, 7),
        (ConvSpec::new(16, 64, 3).pad(1, r), 8, 21),
        (ConvSpec::new(32, 64, 3).stride(2).pad(1, z), 10, 9),
        (ConvSpec::new(8, 16, 3).stride(2).pad(1, z), 7, 12),
        (ConvSpec::new(6, 40, 4).stride(2).pad(1, z), 9, 10),
        (ConvSpec::new(7, 3, 1), 5, 6),
        (ConvSpec::new(4, 130, 3).pad(1, z), 5, 5),
        (ConvSpec::new(3, 8, 5).stride(3).pad(2, r), 11, 13),
        (
            ConvSpec::new(64, 32, 3).stride(2).pad(1, z).transposed(1),
            6,
            5,
        ),
        (
            ConvSpec::new(16, 24, 3).stride(2).pad(1, z).transposed(1),
            5,
            7,
        ),
        (
            ConvSpec::new(12, 8, 4).stride(2).pad(1, z).transposed(0),
            4,
            3,
        ),
        (
            ConvSpec::new(5, 6, 3).stride(1).pad(1, z).transposed(0),
            6,
            4,
        ),
        (
            ConvSpec::new(9, 20, 5).stride(3).pad(2, z).transposed(2),
            3,
            4,
        ),
        (ConvSpec::new(4, 4, 2).stride(2).transposed(0), 3, 3),
        // Full tiles with the compile-time pixel strides (32 on AVX2, 64, 128, 256 floats).
        (ConvSpec::new(32, 24, 3).pad(1, z), 2, 14),
        (ConvSpec::new(64, 32, 3).pad(1, r), 3, 26),
        (ConvSpec::new(128, 64, 1), 2, 13),
        (ConvSpec::new(256, 16, 1), 2, 29),
        (ConvSpec::new(64, 64, 3).stride(2).pad(1, z), 3, 26),
    ]
}

#[test]
fn convolutions_match_the_reference_on_every_isa() {
    let mut rng = Rng(0x9E3779B97F4A7C15);
    for (spec, h, w) in cases() {
        let x = rng.vec(spec.c_in * h * w);
        let wt = rng.vec(spec.c_in * spec.c_out * spec.k * spec.k);
        let bias = rng.vec(spec.c_out);
        let want = reference(&spec, &x, h, w, &wt, Some(&bias));
        let (ho, wo) = spec.output_size(h, w).unwrap();
        let m = Map::from_chw(&x, spec.c_in, h, w);
        for isa in isas() {
            for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
                let conv = Conv::with_isa(spec, &wt, Some(&bias), precision, isa).unwrap();
                let y = conv.forward(&m).unwrap();
                assert_eq!((y.h, y.w, y.c), (ho, wo, spec.c_out), "{spec:?}");
                let err = rel_err(&y.to_chw(), &want);
                // int8: inputs and weights each within half a step of 1/127–1/255 of their
                // range; the sums' errors stay a few percent of the largest output.
                let tol = if conv.is_int8() {
                    4e-2
                } else if conv.is_bf16() {
                    2e-2
                } else {
                    1e-5
                };
                assert!(
                    err < tol,
                    "{spec:?} {h}x{w} {isa:?} {precision:?}: rel err {err}"
                );
                // Accumulating adds to what is there.
                let mut acc = y.clone();
                conv.forward_into(&m, &mut acc, true).unwrap();
                let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                assert!(
                    rel_err(&acc.to_chw(), &twice) < tol * 2.0,
                    "{spec:?} accumulate"
                );
            }
        }
    }
}

#[test]
fn bf16_is_used_where_the_cpu_has_it() {
    let spec = ConvSpec::new(16, 32, 3).pad(1, PadMode::Zero);
    let wt = vec![0.01f32; 16 * 32 * 9];
    let has = Isa::detect().has_bf16();
    let conv = Conv::new(spec, &wt, None, Precision::Bf16).unwrap();
    assert_eq!(conv.is_bf16(), has);
    // Odd K per kernel row (3 channels × 7 taps) keeps f32.
    let stem = ConvSpec::new(3, 32, 7).pad(3, PadMode::Reflect);
    let conv = Conv::new(stem, &vec![0.01; 3 * 32 * 49], None, Precision::Bf16).unwrap();
    assert!(!conv.is_bf16());
}

#[test]
fn int8_is_used_where_the_cpu_has_vnni_and_k_allows() {
    let spec = ConvSpec::new(16, 32, 3).pad(1, PadMode::Zero);
    let wt = vec![0.01f32; 16 * 32 * 9];
    let has = atelier_kernels::int8::has_vnni() && matches!(Isa::detect(), Isa::Avx512 { .. });
    let conv = Conv::new(spec, &wt, None, Precision::Int8).unwrap();
    assert_eq!(conv.is_int8(), has);
    // The portable loop (tests, ATELIER_ISA=portable) always can.
    let conv = Conv::with_isa(spec, &wt, None, Precision::Int8, Isa::Portable).unwrap();
    assert!(conv.is_int8());
    // K not a multiple of 4 per kernel row (3 channels × 7 taps) keeps f32.
    let stem = ConvSpec::new(3, 32, 7).pad(3, PadMode::Reflect);
    let conv = Conv::new(stem, &vec![0.01; 3 * 32 * 49], None, Precision::Int8).unwrap();
    assert!(!conv.is_int8());
}

/// The VNNI tiles and the portable loop compute the same integer sums: their outputs agree
/// to fp32 rounding, on post-ReLU (zero point 0) and signed (zero point 128) inputs.
#[test]
fn int8_vnni_matches_the_portable_loop() {
    if !atelier_kernels::int8::has_vnni() {
        eprintln!("no AVX512_VNNI here: nothing to compare");
        return;
    }
    let mut rng = Rng(99);
    for (spec, h, w) in [
        (ConvSpec::new(64, 32, 3).pad(1, PadMode::Reflect), 9, 30),
        (
            ConvSpec::new(32, 64, 3).stride(2).pad(1, PadMode::Zero),
            10,
            17,
        ),
        (ConvSpec::new(128, 48, 3).pad(1, PadMode::Zero), 4, 5),
        (
            ConvSpec::new(64, 32, 3)
                .stride(2)
                .pad(1, PadMode::Zero)
                .transposed(1),
            6,
            5,
        ),
    ] {
        let wt = rng.vec(spec.c_in * spec.c_out * spec.k * spec.k);
        let bias = rng.vec(spec.c_out);
        for relu in [true, false] {
            let x: Vec<f32> = rng
                .vec(spec.c_in * h * w)
                .into_iter()
                .map(|v| if relu { v.max(0.0) } else { v })
                .collect();
            let m = Map::from_chw(&x, spec.c_in, h, w);
            let avx = Isa::Avx512 { bf16: false };
            let a = Conv::with_isa(spec, &wt, Some(&bias), Precision::Int8, avx).unwrap();
            let p = Conv::with_isa(spec, &wt, Some(&bias), Precision::Int8, Isa::Portable).unwrap();
            assert!(a.is_int8() && p.is_int8());
            let (ya, yp) = (a.forward(&m).unwrap(), p.forward(&m).unwrap());
            let err = rel_err(&ya.data, &yp.data);
            assert!(err < 1e-6, "{spec:?} relu {relu}: {err}");
        }
    }
}

#[test]
fn planar_head_matches_the_reference() {
    let mut rng = Rng(7);
    for (ci, co, k, p, h, w) in [
        (32, 3, 7, 3, 9, 70),
        (5, 1, 3, 1, 4, 17),
        (8, 4, 5, 2, 6, 33),
    ] {
        let spec = ConvSpec::new(ci, co, k).pad(p, PadMode::Reflect);
        let x = rng.vec(ci * h * w);
        let wt = rng.vec(ci * co * k * k);
        let bias = rng.vec(co);
        let want: Vec<f32> = reference(&spec, &x, h, w, &wt, Some(&bias))
            .iter()
            .map(|v| v.tanh())
            .collect();
        let conv =
            PlanarConv::new(ci, co, k, p, PadMode::Reflect, &wt, Some(&bias), Act::Tanh).unwrap();
        let (y, ho, wo) = conv.forward(&Map::from_chw(&x, ci, h, w)).unwrap();
        assert_eq!((ho, wo), (h, w));
        let e = rel_err(&y, &want);
        // Sums of 1568 products of magnitude ~1 in f32: ~1e-5 of the pre-tanh range.
        assert!(e < 1e-4, "{ci} {co} {k}: {e}");
    }
}

#[test]
fn depthwise_matches_the_reference() {
    let mut rng = Rng(11);
    for (c, k, p, h, w, mode) in [
        (40, 3, 1, 7, 9, PadMode::Reflect),
        (128, 3, 1, 5, 4, PadMode::Zero),
        (3, 5, 2, 6, 6, PadMode::Reflect),
    ] {
        let x = rng.vec(c * h * w);
        let wt = rng.vec(c * k * k);
        let bias = rng.vec(c);
        let conv = Depthwise::new(c, k, p, mode, &wt, Some(&bias)).unwrap();
        let y = conv.forward(&Map::from_chw(&x, c, h, w)).unwrap();
        // Reference: each channel alone through the dense reference.
        let spec = ConvSpec::new(1, 1, k).pad(p, mode);
        let mut want = Vec::new();
        for ch in 0..c {
            want.extend(reference(
                &spec,
                &x[ch * h * w..(ch + 1) * h * w],
                h,
                w,
                &wt[ch * k * k..(ch + 1) * k * k],
                Some(&bias[ch..ch + 1]),
            ));
        }
        assert!(rel_err(&y.to_chw(), &want) < 1e-5, "{c} {k}");
    }
}

#[test]
fn bad_layers_and_inputs_are_errors() {
    let spec = ConvSpec::new(4, 8, 3);
    assert!(Conv::new(spec, &[0.0; 10], None, Precision::F32).is_err());
    assert!(Conv::new(spec, &[0.0; 288], Some(&[0.0; 3]), Precision::F32).is_err());
    let conv = Conv::new(spec, &[0.0; 288], None, Precision::F32).unwrap();
    assert!(
        conv.forward(&Map::zeros(5, 5, 3)).is_err(),
        "wrong channels"
    );
    assert!(conv.forward(&Map::zeros(2, 5, 4)).is_err(), "too small");
    assert!(PlanarConv::new(4, 5, 3, 1, PadMode::Zero, &[0.0; 180], None, Act::None).is_err());
}

/// Reference gradients of `y = conv(x, w)` (zero padding `p`, stride `s`) for an output
/// gradient `g`: (dx, dw), f64 sums.
fn conv_grads(
    spec: &ConvSpec,
    x: &[f32],
    h: usize,
    w: usize,
    wt: &[f32],
    g: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (ci, co, k, s, p) = (spec.c_in, spec.c_out, spec.k, spec.stride, spec.padding);
    let (ho, wo) = spec.output_size(h, w).unwrap();
    let mut dx = vec![0f64; ci * h * w];
    let mut dw = vec![0f64; co * ci * k * k];
    for o in 0..co {
        for oy in 0..ho {
            for ox in 0..wo {
                let gv = g[(o * ho + oy) * wo + ox] as f64;
                for i in 0..ci {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky) as isize - p as isize;
                            let ix = (ox * s + kx) as isize - p as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let xi = (i * h + iy as usize) * w + ix as usize;
                            let wi = ((o * ci + i) * k + ky) * k + kx;
                            dx[xi] += gv * wt[wi] as f64;
                            dw[wi] += gv * x[xi] as f64;
                        }
                    }
                }
            }
        }
    }
    (
        dx.into_iter().map(|v| v as f32).collect(),
        dw.into_iter().map(|v| v as f32).collect(),
    )
}

/// The training identities the custom ops use: the input gradient of a convolution is the
/// transposed convolution of its output gradient with the same weights (and vice versa), and
/// `grad::weight_grad` gives the weight gradient, on every ISA.
#[test]
fn convolution_gradients_match_the_reference() {
    let mut rng = Rng(0xDEADBEEF);
    let z = PadMode::Zero;
    for (spec, h, w) in [
        (ConvSpec::new(3, 16, 7).pad(3, z), 9, 11),
        (ConvSpec::new(8, 12, 3).pad(1, z), 7, 6),
        (ConvSpec::new(16, 32, 3).stride(2).pad(1, z), 8, 9),
        (ConvSpec::new(6, 70, 4).stride(2).pad(1, z), 10, 7),
        (ConvSpec::new(9, 3, 3), 6, 5),
        (ConvSpec::new(64, 1, 4).pad(1, z), 5, 6),
        // dy of 40 × 64 px × 16 ch: more than one 128 KiB band of rows (AVX2 weight grad).
        (ConvSpec::new(7, 16, 3).pad(1, z), 40, 64),
        // 1110 output pixels in chunks of 512 (AVX2 packed weight grad), 40 outputs (a
        // partial 16-lane panel), 13 inputs (a partial block of 6), stride 2.
        (ConvSpec::new(13, 40, 3).stride(2).pad(1, z), 60, 74),
        // The brief's DCGAN discriminator, narrowed (5×5 stride 2 from 16 filters).
        (ConvSpec::new(3, 16, 5).stride(2).pad(2, z), 28, 28),
        (ConvSpec::new(16, 32, 5).stride(2).pad(2, z), 14, 14),
    ] {
        let (ci, co, k, s, p) = (spec.c_in, spec.c_out, spec.k, spec.stride, spec.padding);
        let (ho, wo) = spec.output_size(h, w).unwrap();
        let x = rng.vec(ci * h * w);
        let wt = rng.vec(co * ci * k * k);
        let g = rng.vec(co * ho * wo);
        let (dx_ref, dw_ref) = conv_grads(&spec, &x, h, w, &wt, &g);
        let gm = Map::from_chw(&g, co, ho, wo);
        for isa in isas() {
            // dx: transposed convolution of g, weight (co, ci, k, k) read as (in, out, k, k).
            let tspec = ConvSpec::new(co, ci, k).stride(s).pad(p, z).transposed(0);
            let t = Conv::with_isa(tspec, &wt, None, Precision::F32, isa).unwrap();
            let ws = atelier_kernels::map::Workspace::default();
            let dx = t.forward_sized(&gm, h, w, &ws).unwrap();
            assert_eq!((dx.h, dx.w), (h, w), "{spec:?}");
            let e = rel_err(&dx.to_chw(), &dx_ref);
            assert!(e < 1e-5, "{spec:?} {isa:?} dx {e}");
            // dw from the zero-padded input.
            let xm = Map::from_chw(&x, ci, h, w);
            let xp = atelier_kernels::map::pad(&xm, p, p, p, p, z);
            let dw = atelier_kernels::grad::weight_grad_with_isa(&xp, &gm, k, s, isa).unwrap();
            let e = rel_err(&dw, &dw_ref);
            assert!(e < 1e-5, "{spec:?} {isa:?} dw {e}");
        }
    }
}

/// `x` rounded to bf16 (nearest, ties to even) and back.
fn bf16_round(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|v| {
            let b = v.to_bits();
            f32::from_bits(((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16)
        })
        .collect()
}

/// The bf16 weight gradient (training in bf16) is the exact gradient of the bf16-rounded
/// input and output gradient up to f32 summation, and within bf16 rounding of the f32 one:
/// odd pixel counts (a pixel paired with zeros), partial 32-lane panels, partial blocks of 6
/// inputs, several chunks of pixels.
#[test]
fn bf16_weight_gradients_match_the_rounded_reference() {
    let isa = Isa::detect();
    if !isa.has_bf16() {
        eprintln!("skipped: this CPU has no AVX512_BF16 (the bf16 weight gradient is f32 here)");
        return;
    }
    let mut rng = Rng(0xB16B00B5);
    let z = PadMode::Zero;
    for (spec, h, w) in [
        (ConvSpec::new(8, 32, 3).pad(1, z), 7, 5),
        (ConvSpec::new(13, 40, 3).stride(2).pad(1, z), 65, 69),
        (ConvSpec::new(64, 128, 4).stride(2).pad(1, z), 17, 15),
        (ConvSpec::new(3, 16, 7).pad(3, z), 9, 11),
    ] {
        let (ci, co, k, s, p) = (spec.c_in, spec.c_out, spec.k, spec.stride, spec.padding);
        let (ho, wo) = spec.output_size(h, w).unwrap();
        let x = rng.vec(ci * h * w);
        let wt = rng.vec(co * ci * k * k);
        let g = rng.vec(co * ho * wo);
        let (_, dw_f32) = conv_grads(&spec, &x, h, w, &wt, &g);
        let (_, dw_bf16) = conv_grads(&spec, &bf16_round(&x), h, w, &wt, &bf16_round(&g));
        let xp = atelier_kernels::map::pad(&Map::from_chw(&x, ci, h, w), p, p, p, p, z);
        let gm = Map::from_chw(&g, co, ho, wo);
        let dw =
            atelier_kernels::grad::weight_grad_in(&xp, &gm, k, s, isa, Precision::Bf16).unwrap();
        let exact = rel_err(&dw, &dw_bf16);
        assert!(
            exact < 1e-5,
            "{spec:?}: {exact} from the bf16-rounded reference"
        );
        let rounding = rel_err(&dw, &dw_f32);
        assert!(
            rounding < 1e-2,
            "{spec:?}: {rounding} from the f32 gradient"
        );
        // It did run in bf16 (the f32 kernel would be within 1e-5 of the f32 reference).
        assert!(rounding > 1e-5, "{spec:?}: {rounding}: not bf16");
    }
}
