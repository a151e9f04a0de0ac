#![allow(unsafe_code)]
//! Throughput of FMA, bf16 and int8 dot-product instructions on one core.
use std::arch::x86_64::*;
use std::time::Instant;

#[target_feature(enable = "avx512f,avx512bf16,avx512vnni,avx512bw")]
fn run() {
    const N: usize = 24;
    let iters = 20_000_000usize / N * 4;
    let b = _mm512_set1_ps(std::hint::black_box(0.5));
    let t = Instant::now();
    let mut acc = [_mm512_set1_ps(1.0); N];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, b, b);
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "fma   : {:.1} GMAC/s",
        (iters * N * 16) as f64 / s / 1e9
            + 0.0 * acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum::<f32>() as f64
    );
    let bh: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi16(0x3f00)) };
    let t = Instant::now();
    let mut acc = [_mm512_set1_ps(1.0); N];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, bh, bh);
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "bf16  : {:.1} GMAC/s",
        (iters * N * 32) as f64 / s / 1e9
            + 0.0 * acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum::<f32>() as f64
    );
    let i8v = _mm512_set1_epi8(3);
    let t = Instant::now();
    let mut acc = [_mm512_set1_epi32(1); N];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, i8v, i8v);
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "vnni8 : {:.1} GMAC/s",
        (iters * N * 64) as f64 / s / 1e9
            + 0.0 * acc.iter().map(|a| _mm512_reduce_add_epi32(*a)).sum::<i32>() as f64
    );
}
fn main() {
    unsafe { run() }
}
