//! Element-wise training ops over the contiguous planes of NCHW tensors: instance norm +
//! activation (forward and backward), per-channel bias and its gradient, LeakyReLU.
//!
//! The training graph keeps candle's NCHW layout, where every `(n, c)` plane is contiguous.
//! Each function here works on one plane (the callers split a tensor into planes on rayon's
//! pool). The bodies are plain Rust over 16-lane arrays, compiled three times (AVX-512,
//! AVX2+FMA, portable) and chosen at run time by [`Isa::detect`](crate::micro::Isa::detect): the release binary targets
//! baseline x86-64, where the same loops would auto-vectorize to 4-lane SSE2 only. All three
//! versions sum in the same order (16 lane sums, then the lanes in order, then the tail), so
//! results do not depend on the instruction set.

const L: usize = 16;

/// Defines `fn $name` from a body compiled for AVX-512, AVX2+FMA and the build target,
/// dispatched on [`Isa::detect`](crate::micro::Isa::detect) (also used by `ops` and `int8`).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(unsafe_code)]
                unsafe fn avx512($($a: $t),*) $(-> $r)? { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(unsafe_code)]
                unsafe fn avx2($($a: $t),*) $(-> $r)? { body($($a),*) }
                match $crate::micro::Isa::detect() {
                    // SAFETY: the instruction set was detected on this CPU.
                    #[allow(unsafe_code)]
                    $crate::micro::Isa::Avx512 { .. } => return unsafe { avx512($($a),*) },
                    // SAFETY: as above.
                    #[allow(unsafe_code)]
                    $crate::micro::Isa::Avx2 => return unsafe { avx2($($a),*) },
                    $crate::micro::Isa::Portable => {}
                }
            }
            body($($a),*)
        }
    };
}

/// `Σ f(x[i])` in 16 lane sums.
#[inline(always)]
fn lanes_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for l in 0..L {
            acc[l] += f(c[l]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// The activation after a normalization, as its slope for negative inputs: 1 for none,
/// 0 for ReLU, `s` for LeakyReLU(s).
#[inline(always)]
fn act(t: f32, slope: f32) -> f32 {
    if t >= 0.0 {
        t
    } else {
        t * slope
    }
}

multiversion! {
    /// Σ of a plane (a bias gradient).
    pub fn plane_sum(x: &[f32]) -> f32 {
        lanes_sum(x, |v| v)
    }
}

multiversion! {
    /// Mean and `1/√(σ² + ε)` of a plane (biased variance, as InstanceNorm2d), two passes.
    pub fn plane_stats(x: &[f32], eps: f32) -> (f32, f32) {
        let n = x.len().max(1) as f32;
        let mean = lanes_sum(x, |v| v) / n;
        let var = lanes_sum(x, |v| (v - mean) * (v - mean)) / n;
        (mean, 1.0 / (var + eps).sqrt())
    }
}

multiversion! {
    /// `y = act((x − mean)·r)` with the negative slope `slope`.
    pub fn norm_act_forward(x: &[f32], y: &mut [f32], mean: f32, r: f32, slope: f32) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = act((v - mean) * r, slope);
        }
    }
}

multiversion! {
    /// Input gradient of [`norm_act_forward`] with the statistics it used: with
    /// `t = (x − mean)·r` and `gy = g` where `t > 0`, `g·slope` elsewhere,
    /// `dx = r·(gy − mean(gy) − t·mean(gy·t))`.
    pub fn norm_act_backward(x: &[f32], g: &[f32], dx: &mut [f32], mean: f32, r: f32, slope: f32) {
        let n = x.len();
        let gy = |v: f32, gv: f32| if (v - mean) * r > 0.0 { gv } else { gv * slope };
        let (mut s1, mut s2) = ([0f32; L], [0f32; L]);
        let full = n / L * L;
        for (xc, gc) in x[..full].chunks_exact(L).zip(g[..full].chunks_exact(L)) {
            for l in 0..L {
                let t = (xc[l] - mean) * r;
                let d = gy(xc[l], gc[l]);
                s1[l] += d;
                s2[l] += d * t;
            }
        }
        let (mut t1, mut t2) = (0f32, 0f32);
        for (&v, &gv) in x[full..].iter().zip(&g[full..]) {
            let d = gy(v, gv);
            t1 += d;
            t2 += d * (v - mean) * r;
        }
        let inv = 1.0 / n.max(1) as f32;
        let mg = (s1.iter().sum::<f32>() + t1) * inv;
        let mgy = (s2.iter().sum::<f32>() + t2) * inv;
        for ((d, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
            let t = (v - mean) * r;
            *d = r * (gy(v, gv) - mg - t * mgy);
        }
    }
}

multiversion! {
    /// `y = x + b` over a plane.
    pub fn add_scalar(x: &[f32], y: &mut [f32], b: f32) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = v + b;
        }
    }
}

multiversion! {
    /// `y = x` where `x ≥ 0`, `x·slope` elsewhere.
    pub fn leaky_forward(x: &[f32], y: &mut [f32], slope: f32) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = act(v, slope);
        }
    }
}

multiversion! {
    /// Input gradient of [`leaky_forward`]: `g` where `x > 0`, `g·slope` elsewhere
    /// (PyTorch's convention at 0).
    pub fn leaky_backward(x: &[f32], g: &[f32], dx: &mut [f32], slope: f32) {
        for ((d, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
            *d = if v > 0.0 { gv } else { gv * slope };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 3.0 - 1.0
            })
            .collect()
    }

    /// Instance norm + LeakyReLU and its gradient against f64 sums, on sizes around the lane
    /// width (tails included).
    #[test]
    fn norm_act_matches_f64() {
        for n in [1usize, 5, 16, 17, 33, 100, 4096 + 3] {
            for slope in [1.0f32, 0.0, 0.2] {
                let x = data(n, n as u64 + 7);
                let g = data(n, n as u64 + 99);
                let (mean, r) = plane_stats(&x, 1e-5);
                let m64 = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                let v64 = x.iter().map(|&v| (v as f64 - m64).powi(2)).sum::<f64>() / n as f64;
                let r64 = 1.0 / (v64 + 1e-5).sqrt();
                assert!((mean as f64 - m64).abs() < 1e-5, "{n}");
                assert!((r as f64 - r64).abs() / r64 < 1e-4, "{n}");
                let mut y = vec![0f32; n];
                norm_act_forward(&x, &mut y, mean, r, slope);
                let mut dx = vec![0f32; n];
                norm_act_backward(&x, &g, &mut dx, mean, r, slope);
                let t: Vec<f64> = x.iter().map(|&v| (v as f64 - m64) * r64).collect();
                let gy: Vec<f64> = t
                    .iter()
                    .zip(&g)
                    .map(|(&t, &g)| {
                        if t > 0.0 {
                            g as f64
                        } else {
                            g as f64 * slope as f64
                        }
                    })
                    .collect();
                let mg = gy.iter().sum::<f64>() / n as f64;
                let mgy = gy.iter().zip(&t).map(|(a, b)| a * b).sum::<f64>() / n as f64;
                for i in 0..n {
                    let yr = if t[i] >= 0.0 {
                        t[i]
                    } else {
                        t[i] * slope as f64
                    };
                    assert!((y[i] as f64 - yr).abs() < 1e-4, "{n} {slope} y[{i}]");
                    let dr = r64 * (gy[i] - mg - t[i] * mgy);
                    assert!((dx[i] as f64 - dr).abs() < 1e-3, "{n} {slope} dx[{i}]");
                }
            }
        }
    }

    #[test]
    fn sums_bias_and_leaky() {
        let x = data(1000, 3);
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((plane_sum(&x) as f64 - s).abs() < 1e-3);
        let mut y = vec![0f32; 1000];
        add_scalar(&x, &mut y, 0.5);
        assert!(y.iter().zip(&x).all(|(a, b)| *a == b + 0.5));
        leaky_forward(&x, &mut y, 0.2);
        assert!(y
            .iter()
            .zip(&x)
            .all(|(a, &b)| *a == if b >= 0.0 { b } else { b * 0.2 }));
        let g = data(1000, 4);
        let mut dx = vec![0f32; 1000];
        leaky_backward(&x, &g, &mut dx, 0.2);
        for i in 0..1000 {
            assert_eq!(dx[i], if x[i] > 0.0 { g[i] } else { g[i] * 0.2 });
        }
    }
}
