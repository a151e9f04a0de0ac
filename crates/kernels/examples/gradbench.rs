//! Times the weight gradient on the training step's dominant shapes:
//! `cargo run --release -p atelier-kernels --example gradbench` (`CASE=512` for one case).
use atelier_kernels::grad::weight_grad;
use atelier_kernels::Map;
use std::time::Instant;

fn map(h: usize, w: usize, c: usize, seed: u32) -> Map {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    let data = (0..h * w * c)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    Map { h, w, c, data }
}

extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

fn main() {
    // The allocator settings of the `atelier` binary (its `tune_allocator`); GLIBC_DEFAULT=1
    // keeps glibc's defaults, which return every large buffer to the kernel.
    if std::env::var("GLIBC_DEFAULT").is_err() {
        // M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3
        #[allow(unsafe_code)]
        unsafe {
            mallopt(-1, 256 << 20);
            mallopt(-3, 1 << 25);
        }
    }
    let peak = atelier_kernels::peak::fp32_gflops(2, 300);
    println!("peak fp32: {peak:.0} GFLOP/s (2 threads)");
    // (name, input h=w, ci, output h=w, co, k, stride)
    let cases = [
        ("G res 128->128 3x3 @32", 34, 128, 32, 128, 3, 1),
        ("G down 64->128 s2 @32", 66, 64, 32, 128, 3, 2),
        ("G down 32->64 s2 @64", 130, 32, 64, 64, 3, 2),
        ("D 256->512 4x4 @15", 18, 256, 15, 512, 4, 1),
        ("D 128->256 4x4 s2 @16", 34, 128, 16, 256, 4, 2),
        ("D 64->128 4x4 s2 @32", 66, 64, 32, 128, 4, 2),
    ];
    let only = std::env::var("CASE").ok();
    for (name, hi, ci, ho, co, k, s) in cases {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let xp = map(hi, hi, ci, 1);
        let dy = map(ho, ho, co, 2);
        let flops = 2.0 * (ho * ho * co * ci * k * k) as f64;
        let reps = 31;
        weight_grad(&xp, &dy, k, s).unwrap();
        let mut v: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(weight_grad(&xp, &dy, k, s).unwrap());
                t.elapsed().as_secs_f64()
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let (min, med) = (v[0], v[reps / 2]);
        let g = flops / med / 1e9;
        println!(
            "{name:28} median {:7.2} ms (min {:7.2})  {g:6.1} GFLOP/s  {:4.0}% of peak",
            med * 1e3,
            min * 1e3,
            100.0 * g / peak
        );
    }
}
