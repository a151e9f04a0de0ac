//! Renders a demo figure of GAN-like training curves to
//! `/tmp/plot_example.png` (or the path given as the first argument) and
//! times rendering 4 series × 200k points.
//!
//! `cargo run --release -p atelier-plot --example demo [-- OUT.png]`

use std::time::Instant;

use atelier_plot::{render, save_png, Chart, Series};

/// Small deterministic generator (xorshift64*) with Gaussian samples.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// GAN-like losses over `steps` steps: D settles near 0.25, G near 0.8 with
/// bursts, the cycle loss decays from ~6 to ~1. Returns (D_A, G_A, cycle_A).
fn gan_losses(steps: usize, rng: &mut Rng) -> [Series; 3] {
    let mut d = Vec::with_capacity(steps);
    let mut g = Vec::with_capacity(steps);
    let mut c = Vec::with_capacity(steps);
    for i in 0..steps {
        let t = i as f64 / steps as f64;
        let x = i as f64;
        let wobble = (t * 23.0).sin() * 0.05;
        d.push((
            x,
            (0.25 + 0.2 * (-t * 8.0).exp() + wobble + 0.06 * rng.normal()).max(0.01),
        ));
        g.push((
            x,
            (0.8 - wobble * 2.0 + 0.3 * (-t * 5.0).exp() + 0.12 * rng.normal()).max(0.05),
        ));
        c.push((x, 1.0 + 5.0 * (-t * 6.0).exp() + 0.15 * rng.normal().abs()));
    }
    [
        Series::new("D_A", d),
        Series::new("G_A", g),
        Series::new("cycle_A", c),
    ]
}

/// Constant learning rate for the first half, then linear decay to zero.
fn learning_rate(steps: usize) -> Series {
    let points = (0..steps)
        .map(|i| {
            let t = i as f64 / steps as f64;
            let lr = if t < 0.5 {
                2e-4
            } else {
                2e-4 * (1.0 - t) / 0.5
            };
            (i as f64, lr)
        })
        .collect();
    Series::new("lr", points)
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/plot_example.png".into());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let steps = 5000;
    let mut losses = Chart::new("CycleGAN losses", "step", "loss");
    losses.series = gan_losses(steps, &mut rng).into();
    let mut lr = Chart::new("Learning rate", "step", "lr");
    lr.series = vec![learning_rate(steps)];
    save_png(&[losses, lr], 1000, 900, &out).expect("write PNG");
    println!("wrote {out}");

    // Timing: 4 series × 200k points, one chart, 1000×600.
    let big = 200_000;
    let mut chart = Chart::new("4 x 200k points", "step", "loss");
    let mut series: Vec<Series> = gan_losses(big, &mut rng).into();
    series.push(Series::new(
        "idt_A",
        (0..big)
            .map(|i| (i as f64, 0.5 + 0.1 * rng.normal()))
            .collect(),
    ));
    chart.series = series;
    let charts = [chart];
    let _ = render(&charts, 1000, 600); // warm-up
    let runs = 5;
    let start = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(render(&charts, 1000, 600));
    }
    let per = start.elapsed().as_secs_f64() / f64::from(runs);
    println!("render 4 x {big} points at 1000x600: {:.1} ms", per * 1e3);
}
