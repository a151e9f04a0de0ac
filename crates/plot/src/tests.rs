use super::*;

fn chart_with(series: Vec<Series>) -> Chart {
    Chart {
        title: "Losses".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series,
        ..Chart::default()
    }
}

fn constant(name: &str, y: f64, n: usize) -> Series {
    Series::new(name, (0..n).map(|i| (i as f64, y)).collect())
}

/// Pixels clearly tinted towards `color` (lines including their
/// anti-aliased edges; not white, grey grid, frame or text).
fn tinted(p: &Rgb<u8>, color: Color) -> bool {
    let [r, g, b] = p.0.map(i32::from);
    let [cr, cg, cb] = color.map(i32::from);
    // Direction of the colour away from grey, compared with the pixel's.
    let cm = (cr + cg + cb) / 3;
    let pm = (r + g + b) / 3;
    let (dc, dp) = ([cr - cm, cg - cm, cb - cm], [r - pm, g - pm, b - pm]);
    let dot: i32 = dc.iter().zip(dp.iter()).map(|(a, b)| a * b).sum();
    let norm_c: i32 = dc.iter().map(|a| a * a).sum();
    let norm_p: i32 = dp.iter().map(|a| a * a).sum();
    norm_p > 15 * 15 && f64::from(dot) > 0.9 * f64::from(norm_c).sqrt() * f64::from(norm_p).sqrt()
}

/// Rows (relative to the plot area) that hold pixels tinted `color` inside
/// `rect`, and the number of plot columns that hold any.
fn tinted_rows_and_cols(img: &RgbImage, rect: Rect, color: Color) -> (Vec<i64>, i64) {
    let mut rows = Vec::new();
    let mut cols = 0;
    for x in rect.x..rect.x + rect.w {
        let mut any = false;
        for y in rect.y..rect.y + rect.h {
            if tinted(img.get_pixel(x as u32, y as u32), color) {
                rows.push(y - rect.y);
                any = true;
            }
        }
        cols += i64::from(any);
    }
    rows.sort_unstable();
    rows.dedup();
    (rows, cols)
}

/// Asserts that no pixel tinted `color` lies outside `rect`, except in the
/// header band above it (legend swatches).
fn assert_only_inside(img: &RgbImage, rect: Rect, color: Color, panel_top: i64) {
    for (x, y, p) in img.enumerate_pixels() {
        let (x, y) = (i64::from(x), i64::from(y));
        let inside =
            (rect.x..rect.x + rect.w).contains(&x) && (rect.y..rect.y + rect.h).contains(&y);
        let header = (panel_top..rect.y).contains(&y);
        if !inside && !header {
            assert!(
                !tinted(p, color),
                "colour {color:?} leaked to ({x}, {y}): {p:?}"
            );
        }
    }
}

#[test]
fn tint_detector_distinguishes_palette_and_greys() {
    for (i, &c) in PALETTE.iter().enumerate() {
        if i == 7 {
            continue; // the palette's grey
        }
        assert!(tinted(&Rgb(c), c));
        for g in [WHITE, TEXT, MUTED, GRID, FRAME] {
            assert!(!tinted(&Rgb(g), c));
        }
    }
    assert!(!tinted(&Rgb(PALETTE[1]), PALETTE[0]));
}

#[test]
fn constant_series_is_drawn_across_the_middle_of_a_fixed_range() {
    let mut chart = chart_with(vec![constant("D_A", 1.0, 100)]);
    chart.y_range = Some((0.0, 2.0));
    let (img, rects) = render_with_layout(&[chart], 640, 400);
    let rect = rects[0].expect("plot area");
    let blue = PALETTE[0];
    let (rows, cols) = tinted_rows_and_cols(&img, rect, blue);
    assert!(!rows.is_empty(), "no line drawn");
    let mid = rect.h / 2;
    assert!(
        rows.iter().all(|&r| (r - mid).abs() <= 3),
        "rows {rows:?}, expected near {mid} of {}",
        rect.h
    );
    assert!(
        cols >= rect.w * 95 / 100,
        "line spans {cols} of {} columns",
        rect.w
    );
    assert_only_inside(&img, rect, blue, 0);
}

#[test]
fn two_series_land_at_their_own_heights_in_their_own_colours() {
    let mut chart = chart_with(vec![
        constant("G_GAN", 0.5, 10),
        constant("cycle_A", 1.5, 10),
    ]);
    chart.y_range = Some((0.0, 2.0));
    chart.x_range = Some((0.0, 9.0));
    let (img, rects) = render_with_layout(&[chart], 500, 500);
    let rect = rects[0].expect("plot area");
    let (blue_rows, _) = tinted_rows_and_cols(&img, rect, PALETTE[0]);
    let (orange_rows, _) = tinted_rows_and_cols(&img, rect, PALETTE[1]);
    let near = |rows: &[i64], frac: f64| {
        let want = ((1.0 - frac) * rect.h as f64) as i64;
        !rows.is_empty() && rows.iter().all(|&r| (r - want).abs() <= 3)
    };
    assert!(
        near(&blue_rows, 0.25),
        "blue rows {blue_rows:?} of {}",
        rect.h
    );
    assert!(
        near(&orange_rows, 0.75),
        "orange rows {orange_rows:?} of {}",
        rect.h
    );
}

#[test]
fn auto_range_centres_a_constant_series() {
    let chart = chart_with(vec![constant("lr", 2e-4, 50)]);
    let (img, rects) = render_with_layout(&[chart], 400, 300);
    let rect = rects[0].expect("plot area");
    let (rows, cols) = tinted_rows_and_cols(&img, rect, PALETTE[0]);
    let mid = rect.h / 2;
    assert!(
        !rows.is_empty() && rows.iter().all(|&r| (r - mid).abs() <= 3),
        "{rows:?}"
    );
    assert!(cols >= rect.w * 95 / 100);
}

#[test]
fn log_axis_places_decades_evenly_and_skips_non_positive_values() {
    let mut pts: Vec<(f64, f64)> = (0..40).map(|i| (i as f64, 10.0)).collect();
    pts[5].1 = 0.0;
    pts[6].1 = -3.0;
    let mut chart = chart_with(vec![Series::new("D(x)", pts)]);
    chart.log_y = true;
    chart.y_range = Some((1.0, 100.0));
    let (img, rects) = render_with_layout(&[chart], 600, 400);
    let rect = rects[0].expect("plot area");
    let (rows, _) = tinted_rows_and_cols(&img, rect, PALETTE[0]);
    let mid = rect.h / 2;
    assert!(
        !rows.is_empty() && rows.iter().all(|&r| (r - mid).abs() <= 3),
        "{rows:?}"
    );
}

#[test]
fn lines_are_clipped_to_the_plot_area() {
    let mut chart = chart_with(vec![Series::new(
        "idt_B",
        vec![
            (0.0, -100.0),
            (1.0, 100.0),
            (2.0, -1e300),
            (3.0, 1e300),
            (4.0, 0.5),
        ],
    )]);
    chart.y_range = Some((0.0, 1.0));
    let (img, rects) = render_with_layout(&[chart], 500, 300);
    let rect = rects[0].expect("plot area");
    let (rows, _) = tinted_rows_and_cols(&img, rect, PALETTE[0]);
    assert!(!rows.is_empty());
    assert_only_inside(&img, rect, PALETTE[0], 0);
}

#[test]
fn charts_stack_vertically_with_aligned_plot_areas() {
    // Short y tick labels ("0", "1", "2") above long ones ("1.5e-4").
    let a = chart_with(vec![Series::from_values("a", &[0.0, 2.0])]);
    let b = chart_with(vec![Series::from_values("lr", &[0.0, 2e-4])]);
    let (img, rects) = render_with_layout(&[a, b], 800, 900);
    assert_eq!(img.dimensions(), (800, 900));
    let (ra, rb) = (rects[0].unwrap(), rects[1].unwrap());
    assert!(ra.y + ra.h < 450 && rb.y > 450, "{ra:?} {rb:?}");
    assert!(rb.y + rb.h < 900);
    assert_eq!((ra.x, ra.w), (rb.x, rb.w));
    // Nothing is drawn into the outer margin (8 px at scale 1, 16 px at
    // scale 2), so no tick label was pushed into or over it.
    for y in 0..900 {
        for x in 0..16 {
            assert_eq!(img.get_pixel(x, y).0, WHITE, "ink at ({x}, {y})");
        }
    }
}

#[test]
fn degenerate_inputs_render_at_the_requested_size() {
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let charts = vec![
        Chart::default(),
        chart_with(vec![]),
        chart_with(vec![Series::new("empty", vec![])]),
        chart_with(vec![Series::new("one", vec![(3.0, 4.0)])]),
        chart_with(vec![Series::new(
            "same x",
            vec![(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)],
        )]),
        chart_with(vec![Series::new(
            "nan",
            vec![(nan, nan), (inf, 1.0), (1.0, -inf)],
        )]),
        chart_with(vec![Series::new(
            "gaps",
            vec![
                (0.0, 1.0),
                (1.0, nan),
                (2.0, 2.0),
                (3.0, inf),
                (4.0, 3.0),
                (5.0, 4.0),
            ],
        )]),
        chart_with(vec![constant("zero", 0.0, 30), constant("neg", -5.0, 30)]),
        chart_with(vec![Series::new(
            "huge",
            vec![(-f64::MAX, -f64::MAX), (f64::MAX, f64::MAX)],
        )]),
        chart_with(vec![Series::new(
            "tiny",
            vec![(0.0, 1e-300), (1e-300, 2e-300)],
        )]),
        chart_with(vec![Series::new(
            "offset",
            vec![(0.0, 1e17), (1.0, 1e17 + 64.0)],
        )]),
        chart_with(vec![Series::from_values(
            "noisy",
            &(0..500)
                .map(|i| ((i * 7919) % 13) as f64 - 6.0)
                .collect::<Vec<_>>(),
        )]),
        Chart {
            log_y: true,
            ..chart_with(vec![Series::new(
                "nonpos",
                vec![(0.0, 0.0), (1.0, -1.0), (2.0, nan)],
            )])
        },
        Chart {
            log_y: true,
            y_range: Some((-1.0, 0.0)),
            ..chart_with(vec![Series::new(
                "mixed",
                vec![(0.0, 0.0), (1.0, 1e-12), (2.0, 1e12)],
            )])
        },
        Chart {
            x_range: Some((5.0, 5.0)),
            y_range: Some((nan, inf)),
            smoothing: Smoothing::Window(0),
            ..chart_with(vec![constant("fixed", 1.0, 3)])
        },
        Chart {
            smoothing: Smoothing::Window(1_000_000),
            title: "a very long title that will never fit in a tiny image ~ ü".into(),
            ..chart_with(vec![constant("x", 1.0, 3); 25])
        },
    ];
    for &(w, h) in &[
        (0, 0),
        (1, 1),
        (10, 10),
        (50, 30),
        (120, 2000),
        (300, 200),
        (1000, 800),
    ] {
        for chart in &charts {
            let img = render(std::slice::from_ref(chart), w, h);
            assert_eq!(img.dimensions(), (w, h));
        }
        let img = render(&charts, w, h);
        assert_eq!(img.dimensions(), (w, h));
    }
    assert_eq!(render(&[], 30, 20).dimensions(), (30, 20));
}

#[test]
fn png_round_trips_to_the_requested_size() {
    let chart = chart_with(vec![Series::from_values("G_GAN", &[1.0, 0.8, 0.9, 0.5])]);
    let charts = [chart.clone(), chart];
    let png = render_png(&charts, 321, 456).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let back = image::load_from_memory(&png).unwrap();
    assert_eq!((back.width(), back.height()), (321, 456));
    assert_eq!(back.to_rgb8(), render(&charts, 321, 456));
    assert!(render_png(&[], 0, 10).is_err());
}

#[test]
fn text_appears_in_the_header_and_axis_margins() {
    let chart = chart_with(vec![constant("D_A", 1.0, 10)]);
    let (img, rects) = render_with_layout(std::slice::from_ref(&chart), 600, 400);
    let rect = rects[0].unwrap();
    let dark = |x0: i64, x1: i64, y0: i64, y1: i64| {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x as u32, y as u32).0.iter().all(|&c| c < 120))
            .count()
    };
    assert!(dark(0, 300, 0, rect.y) > 30, "title missing");
    assert!(
        dark(0, rect.x - 1, rect.y, rect.y + rect.h) > 30,
        "y tick labels missing"
    );
    assert!(
        dark(rect.x, rect.x + rect.w, rect.y + rect.h + 1, 400) > 30,
        "x labels missing"
    );
    // Without any text the header is blank.
    let bare = Chart {
        series: chart.series,
        ..Chart::default()
    };
    let (img, rects) = render_with_layout(&[bare], 600, 400);
    let rect = rects[0].unwrap();
    let ink = (0..rect.y - 1)
        .flat_map(|y| (0..600).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x as u32, y as u32).0 != WHITE)
        .count();
    // Only the legend swatch and its label remain.
    assert!(ink > 0 && ink < 400, "{ink}");
}

#[test]
fn robust_range_ignores_rare_outliers_only() {
    let mut v: Vec<f64> = (0..1000).map(|i| 1.0 + 0.001 * i as f64).collect();
    let (lo, hi) = robust_range(&mut v.clone()).unwrap();
    assert_eq!((lo, hi), (1.0, 1.999));
    v[3] = 1e6;
    v[10] = -50.0;
    let (lo, hi) = robust_range(&mut v).unwrap();
    assert!(lo > 0.9 && lo < 1.02 && hi > 1.98 && hi < 2.1, "{lo} {hi}");
    // Few points: plain min..max.
    assert_eq!(robust_range(&mut [3.0, 1e9, 2.0]), Some((2.0, 1e9)));
    assert_eq!(robust_range(&mut []), None);
}

#[test]
fn auto_smoothing_targets_noisy_series() {
    let noisy: Pts = (0..5000)
        .map(|i| Some((i as f64, 1.0 + if i % 2 == 0 { 0.3 } else { -0.3 })))
        .collect();
    let smooth_lr: Pts = (0..5000)
        .map(|i| Some((i as f64, 2e-4 * (1.0 - i as f64 / 5000.0))))
        .collect();
    assert_eq!(smoothing_window(Smoothing::Auto, &noisy), Some(100));
    assert_eq!(smoothing_window(Smoothing::Auto, &smooth_lr), None);
    let stepped: Pts = (0..5000)
        .map(|i| Some((i as f64, 0.5f64.powi(i / 500))))
        .collect();
    assert_eq!(smoothing_window(Smoothing::Auto, &stepped), None);
    let cosine: Pts = (0..5000)
        .map(|i| Some((i as f64, (i as f64 / 200.0).cos())))
        .collect();
    assert_eq!(smoothing_window(Smoothing::Auto, &cosine), None);
    // A decaying trend with modest noise is still "noisy".
    let trend: Pts = (0..5000)
        .map(|i| {
            let t = i as f64 / 5000.0;
            let jitter = if i % 2 == 0 { 0.05 } else { -0.05 };
            Some((i as f64, 1.0 + 5.0 * (-6.0 * t).exp() + jitter))
        })
        .collect();
    assert_eq!(smoothing_window(Smoothing::Auto, &trend), Some(100));
    assert_eq!(smoothing_window(Smoothing::Off, &noisy), None);
    assert_eq!(smoothing_window(Smoothing::Window(9), &smooth_lr), Some(9));
    let s = smooth(&noisy, 101);
    assert_eq!(s.len(), 5000);
    for q in &s[100..4900] {
        let (_, y) = q.unwrap();
        assert!((y - 1.0).abs() < 0.01, "{y}");
    }
}

#[test]
fn decimation_draws_the_same_pixels() {
    let n = 20_000;
    let p: Pts = (0..n)
        .map(|i| {
            let x = i as f64;
            let noise = ((i * 2_654_435_761usize) % 1000) as f64 / 1000.0 - 0.5;
            if i % 3001 == 0 {
                None
            } else {
                Some((x, (x / 3000.0).sin() + noise))
            }
        })
        .collect();
    let (w, h) = (300, 200);
    let xa = Axis {
        lo: 0.0,
        hi: n as f64,
        ticks: vec![],
    };
    let ya = Axis {
        lo: -2.0,
        hi: 2.0,
        ticks: vec![],
    };
    let map = Mapper::new(&xa, &ya, w, h);
    let full: Pts = p
        .iter()
        .map(|q| q.map(|(x, y)| (map.x(x), map.y(y))))
        .collect();
    let dec = to_pixels_decimated(&p, &map);
    assert!(dec.len() < full.len() / 10, "{} points", dec.len());
    let mut a = RgbImage::from_pixel(w as u32, h as u32, Rgb(WHITE));
    let mut b = a.clone();
    let mut m = Mask::new(w, h);
    stroke(&mut m, &full, 1.0, 2.0);
    m.composite_and_clear(&mut a, 0, 0, [0, 0, 0], 1.0);
    stroke(&mut m, &dec, 1.0, 2.0);
    m.composite_and_clear(&mut b, 0, 0, [0, 0, 0], 1.0);
    let differing = a
        .pixels()
        .zip(b.pixels())
        .filter(|(x, y)| x.0[0].abs_diff(y.0[0]) > 64)
        .count();
    assert!(
        differing <= (w * h) as usize / 500,
        "{differing} pixels differ"
    );
}

#[test]
fn non_finite_points_break_the_line() {
    let nan = f64::NAN;
    let pts = vec![
        (0.0, 1.0),
        (1.0, 1.0),
        // Each of these would draw a line across the gap if it were kept
        // (infinite pixel coordinates are clamped to finite ones).
        (f64::INFINITY, 1.0),
        (2.0, nan),
        (f64::NEG_INFINITY, 1.0),
        (2.5, f64::INFINITY),
        (3.0, 1.0),
        (4.0, 1.0),
        (f64::INFINITY, 1.0),
    ];
    let mut chart = chart_with(vec![Series::new("D_B", pts)]);
    chart.x_range = Some((0.0, 4.0));
    chart.y_range = Some((0.0, 2.0));
    let (img, rects) = render_with_layout(&[chart], 600, 300);
    let rect = rects[0].unwrap();
    let has_blue = |frac: f64| {
        let x = rect.x + (frac * (rect.w - 1) as f64) as i64;
        (rect.y..rect.y + rect.h).any(|y| tinted(img.get_pixel(x as u32, y as u32), PALETTE[0]))
    };
    assert!(has_blue(0.1) && has_blue(0.2) && has_blue(0.8) && has_blue(0.9));
    // Between x = 1 and x = 3 the line is interrupted.
    assert!(!has_blue(0.3) && !has_blue(0.5) && !has_blue(0.7));
}
