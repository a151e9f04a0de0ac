//! Times single layers: `cargo run --release -p atelier-kernels --example convbench`.
use atelier_kernels::{Conv, ConvSpec, Map, PadMode, Precision};
use std::time::Instant;

fn time(conv: &Conv, x: &Map, reps: usize) -> f64 {
    conv.forward(x).unwrap();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(conv.forward(x).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[reps / 2]
}

fn main() {
    if std::env::var("OPS").is_ok() {
        ops_bench();
        return;
    }
    println!(
        "peak fp32: {:.0} GFLOP/s (2 threads), {:.0} (1 thread)",
        atelier_kernels::peak::fp32_gflops(2, 300),
        atelier_kernels::peak::fp32_gflops(1, 300)
    );
    let r = PadMode::Reflect;
    let z = PadMode::Zero;
    let cases = [
        ("res 128 3x3 @64", ConvSpec::new(128, 128, 3).pad(1, r), 64),
        (
            "res 128 3x3 @128",
            ConvSpec::new(128, 128, 3).pad(1, r),
            128,
        ),
        (
            "stem 3->32 7x7 @256",
            ConvSpec::new(3, 32, 7).pad(3, r),
            256,
        ),
        (
            "down 32->64 s2 @256",
            ConvSpec::new(32, 64, 3).stride(2).pad(1, z),
            256,
        ),
        (
            "down 64->128 s2 @128",
            ConvSpec::new(64, 128, 3).stride(2).pad(1, z),
            128,
        ),
        (
            "up 128->64 T @64",
            ConvSpec::new(128, 64, 3).stride(2).pad(1, z).transposed(1),
            64,
        ),
        (
            "up 64->32 T @128",
            ConvSpec::new(64, 32, 3).stride(2).pad(1, z).transposed(1),
            128,
        ),
        ("pw 128->128 @64", ConvSpec::new(128, 128, 1), 64),
    ];
    for (name, spec, s) in cases {
        let w = vec![0.01f32; spec.c_in * spec.c_out * spec.k * spec.k];
        let x = Map {
            h: s,
            w: s,
            c: spec.c_in,
            data: (0..s * s * spec.c_in)
                .map(|i| (i % 7) as f32 * 0.1)
                .collect(),
        };
        let macs = spec.macs(s, s) as f64;
        for p in [Precision::F32, Precision::Bf16] {
            let conv = Conv::new(spec, &w, None, p).unwrap();
            let ms = time(&conv, &x, 9);
            println!(
                "{name:24} {:5} {ms:8.2} ms {:7.1} GFLOP/s",
                if conv.is_bf16() { "bf16" } else { "f32" },
                2.0 * macs / ms / 1e6
            );
        }
    }
}

#[allow(dead_code)]
fn med(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[reps / 2]
}

#[allow(dead_code)]
pub fn ops_bench() {
    use atelier_kernels::{ops, Act, PlanarConv};
    let ws = atelier_kernels::map::Workspace::default();
    for (s, c) in [(128usize, 128usize), (512, 32), (256, 64)] {
        let x = Map {
            h: s,
            w: s,
            c,
            data: (0..s * s * c).map(|i| (i % 13) as f32 * 0.1).collect(),
        };
        let st = med(
            || {
                std::hint::black_box(ops::channel_stats(&x));
            },
            9,
        );
        let (sc, sh) = ops::norm_coefficients(&vec![0.1; c], &vec![1.0; c], 1e-5);
        let nz = med(
            || {
                ws.give(
                    ops::normalize_into_padded(
                        &x,
                        &sc,
                        &sh,
                        Act::Relu,
                        None,
                        1,
                        PadMode::Reflect,
                        &ws,
                    )
                    .data,
                );
            },
            9,
        );
        let nr = med(
            || {
                ws.give(
                    ops::normalize_into_padded(
                        &x,
                        &sc,
                        &sh,
                        Act::None,
                        Some((&x, 0)),
                        1,
                        PadMode::Reflect,
                        &ws,
                    )
                    .data,
                );
            },
            9,
        );
        let tc = med(
            || {
                std::hint::black_box(x.to_chw());
            },
            9,
        );
        println!(
            "{s}x{s}x{c}: stats {st:.2} ms, norm+pad {nz:.2}, norm+res+pad {nr:.2}, to_chw {tc:.2}"
        );
    }
    let x = Map {
        h: 512,
        w: 512,
        c: 32,
        data: vec![0.1; 512 * 512 * 32],
    };
    let head = PlanarConv::new(
        32,
        3,
        7,
        3,
        PadMode::Reflect,
        &vec![0.01; 32 * 3 * 49],
        None,
        Act::Tanh,
    )
    .unwrap();
    let t = med(
        || {
            std::hint::black_box(head.forward_ws(&x, &ws).unwrap());
        },
        5,
    );
    println!(
        "head 32->3 7x7 @512: {t:.2} ms = {:.1} GFLOP/s",
        2.0 * 512.0 * 512.0 * 32.0 * 3.0 * 49.0 / t / 1e6
    );
    let t = med(
        || {
            ws.give(x.to_hcw_padded(3, PadMode::Reflect, &ws));
        },
        5,
    );
    println!("to_hcw_padded 512x512x32: {t:.2} ms");
    let img: Vec<f32> = vec![0.5; 3 * 512 * 512];
    let t = med(
        || {
            std::hint::black_box(Map::from_chw(&img, 3, 512, 512));
        },
        9,
    );
    println!("from_chw 3x512x512: {t:.2} ms");
}
