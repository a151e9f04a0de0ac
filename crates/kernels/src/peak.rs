//! The CPU's measured fp32 peak: independent FMA chains on every core, for the benchmark's
//! "fraction of peak" column.

use rayon::prelude::*;

use crate::micro::Isa;

/// Measured fp32 GFLOP/s of `threads` threads running FMAs for about `millis` ms each
/// (2 FLOP per lane per FMA, the ISA's widest vectors).
pub fn fp32_gflops(threads: usize, millis: u64) -> f64 {
    let isa = Isa::detect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("thread pool");
    pool.install(|| {
        (0..threads.max(1))
            .into_par_iter()
            .map(|_| one_thread(isa, millis))
            .sum()
    })
}

fn one_thread(isa: Isa, millis: u64) -> f64 {
    let start = std::time::Instant::now();
    let mut flops = 0f64;
    let mut sink = 0f32;
    while start.elapsed().as_millis() < millis as u128 {
        let (f, s) = burst(isa);
        flops += f;
        sink += s;
    }
    std::hint::black_box(sink);
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// One burst of FMAs; returns (FLOPs, a value that depends on every result).
fn burst(isa: Isa) -> (f64, f32) {
    const ITERS: usize = 1 << 16;
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx512 { .. } = isa {
        // SAFETY: AVX-512F was detected at run time.
        #[allow(unsafe_code)]
        return unsafe { burst_avx512(ITERS) };
    }
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx2 = isa {
        // SAFETY: AVX2 and FMA were detected at run time.
        #[allow(unsafe_code)]
        return unsafe { burst_avx2(ITERS) };
    }
    let _ = isa;
    let mut acc = [[1f32; 8]; 8];
    let m = std::hint::black_box(0.999_999f32);
    let a = std::hint::black_box(1e-7f32);
    for _ in 0..ITERS {
        for r in acc.iter_mut() {
            for v in r.iter_mut() {
                *v = *v * m + a;
            }
        }
    }
    ((ITERS * 64 * 2) as f64, acc.iter().flatten().sum::<f32>())
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
fn burst_avx512(iters: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    const N: usize = 24;
    let mut acc = [_mm512_set1_ps(1.0); N];
    let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm512_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, m, a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    ((iters * N * 16 * 2) as f64, _mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
fn burst_avx2(iters: usize) -> (f64, f32) {
    use std::arch::x86_64::*;
    // 12 independent chains cover an FMA latency of 4-5 cycles at two FMAs per cycle.
    const N: usize = 12;
    let mut acc = [_mm256_set1_ps(1.0); N];
    let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm256_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, m, a);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    // SAFETY: `out` holds the 8 floats the store writes.
    let mut out = [0f32; 8];
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    ((iters * N * 8 * 2) as f64, out.iter().sum())
}
