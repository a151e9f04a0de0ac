//! FID and KID on feature vectors.
//!
//! * **FID** (pytorch-fid's `calculate_frechet_distance`): `|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ −
//!   2 (Σ₁Σ₂)^½)` with covariances divided by `N − 1`. The trace of the matrix square root is
//!   the sum of the square roots of the eigenvalues of `Aᵀ Σ₂ A` for any factor `Σ₁ = A Aᵀ`.
//!   With fewer images than feature dimensions the factor is the centred features themselves,
//!   so the eigenproblem is N×N and exact even though Σ₁ is singular (where pytorch-fid needs
//!   its `eps` fallback); otherwise `A` is the Cholesky factor of Σ₁.
//! * **KID** (torch-fidelity's defaults): unbiased MMD² with the kernel
//!   `k(x, y) = (x·y / d + 1)³`, averaged over random subsets of `min(1000, N)` images of
//!   each set (100 subsets); the standard deviation over the subsets comes with it.

use crate::error::{Error, Result};

/// Feature vectors: `n` rows of `dim` values.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub dim: usize,
}

impl<'a> Rows<'a> {
    /// # Errors
    /// [`Error::Samples`] when the data is not a whole number of rows.
    pub fn new(data: &'a [f32], dim: usize) -> Result<Self> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(Error::Samples(format!(
                "{} values are not rows of {dim} features",
                data.len()
            )));
        }
        Ok(Self { data, dim })
    }
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

fn same_dim(a: &Rows, b: &Rows, min: usize, what: &str) -> Result<()> {
    if a.dim != b.dim {
        return Err(Error::Samples(format!(
            "feature sizes differ ({} vs {})",
            a.dim, b.dim
        )));
    }
    if a.len() < min || b.len() < min {
        return Err(Error::Samples(format!(
            "{what} needs at least {min} images per set (got {} and {})",
            a.len(),
            b.len()
        )));
    }
    Ok(())
}

/// Dense row-major `f64` matrix.
#[derive(Debug, Clone)]
struct Mat {
    r: usize,
    c: usize,
    v: Vec<f64>,
}

impl Mat {
    fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * self.c + j]
    }
    /// `self · otherᵀ` (rows against rows).
    fn mul_t(&self, o: &Mat) -> Mat {
        assert_eq!(self.c, o.c);
        let mut v = vec![0.0; self.r * o.r];
        for i in 0..self.r {
            let a = &self.v[i * self.c..(i + 1) * self.c];
            for j in 0..o.r {
                v[i * o.r + j] = dot(a, &o.v[j * o.c..(j + 1) * o.c]);
            }
        }
        Mat {
            r: self.r,
            c: o.r,
            v,
        }
    }
    fn transpose(&self) -> Mat {
        let mut v = vec![0.0; self.r * self.c];
        for i in 0..self.r {
            for j in 0..self.c {
                v[j * self.r + i] = self.at(i, j);
            }
        }
        Mat {
            r: self.c,
            c: self.r,
            v,
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four partial sums: vectorizes, and is more accurate than one running sum.
    let mut s = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    s[0] + s[1] + s[2] + s[3] + tail
}

/// Mean and centred rows (`n × d`) of a feature set.
fn centred(x: &Rows) -> (Vec<f64>, Mat) {
    let (n, d) = (x.len(), x.dim);
    let mut mu = vec![0.0; d];
    for i in 0..n {
        for (m, &v) in mu.iter_mut().zip(x.row(i)) {
            *m += f64::from(v);
        }
    }
    mu.iter_mut().for_each(|m| *m /= n as f64);
    let mut v = Vec::with_capacity(n * d);
    for i in 0..n {
        v.extend(x.row(i).iter().zip(&mu).map(|(&a, m)| f64::from(a) - m));
    }
    (mu, Mat { r: n, c: d, v })
}

/// Lower Cholesky factor of a symmetric positive definite matrix, `None` if it is not.
fn cholesky(a: &Mat) -> Option<Mat> {
    let n = a.r;
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a.at(i, j) - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(Mat { r: n, c: n, v: l })
}

/// A factor `F` (`k × d`, rows) with `Σ = Fᵀ F` for the covariance of centred rows `xc`.
fn cov_factor(xc: &Mat) -> Result<Mat> {
    let (n, d) = (xc.r, xc.c);
    let scale = 1.0 / ((n - 1) as f64).sqrt();
    if n <= d {
        let mut f = xc.clone();
        f.v.iter_mut().for_each(|v| *v *= scale);
        return Ok(f);
    }
    // Σ = Xᵀ X / (n − 1) = L Lᵀ, so F = Lᵀ; a tiny jitter for a numerically singular Σ.
    let t = xc.transpose();
    let mut cov = t.mul_t(&t);
    cov.v.iter_mut().for_each(|v| *v *= scale * scale);
    let trace: f64 = (0..d).map(|i| cov.at(i, i)).sum();
    for jitter in [0.0, 1e-12, 1e-9, 1e-6] {
        let mut c = cov.clone();
        for i in 0..d {
            c.v[i * d + i] += jitter * trace / d as f64;
        }
        if let Some(l) = cholesky(&c) {
            return Ok(l.transpose());
        }
    }
    Err(Error::Samples(
        "the covariance is not positive semi-definite".into(),
    ))
}

/// Fréchet Inception Distance between two feature sets (at least 2 rows each).
///
/// # Errors
/// [`Error::Samples`] for mismatched dimensions, too few rows or non-finite features.
pub fn fid(a: Rows, b: Rows) -> Result<f64> {
    same_dim(&a, &b, 2, "FID")?;
    let (mu1, x1) = centred(&a);
    let (mu2, x2) = centred(&b);
    if !mu1.iter().chain(&mu2).all(|v| v.is_finite()) {
        return Err(Error::Samples("features are not finite".into()));
    }
    let f1 = cov_factor(&x1)?;
    let f2 = cov_factor(&x2)?;
    let tr = |f: &Mat| f.v.iter().map(|v| v * v).sum::<f64>();
    // Σ₁Σ₂ = F₁ᵀF₁F₂ᵀF₂ has the non-zero eigenvalues of C Cᵀ with C = F₁F₂ᵀ: the squared
    // singular values of C. Use the smaller Gram matrix.
    let c = f1.mul_t(&f2);
    let gram = if c.r <= c.c {
        c.mul_t(&c)
    } else {
        let t = c.transpose();
        t.mul_t(&t)
    };
    let n = gram.r as f64;
    let lambda = symmetric_eigenvalues(gram)?;
    // Eigenvalues that are zero up to rounding (the Gram matrix is rank deficient: centred
    // rows lose one rank) would add √(noise) each; drop them.
    let floor = lambda.iter().fold(0.0f64, |m, &l| m.max(l)) * n * f64::EPSILON;
    let sqrt_trace: f64 = lambda
        .into_iter()
        .map(|l| if l > floor { l.sqrt() } else { 0.0 })
        .sum();
    let dmu: f64 = mu1.iter().zip(&mu2).map(|(x, y)| (x - y) * (x - y)).sum();
    Ok(dmu + tr(&f1) + tr(&f2) - 2.0 * sqrt_trace)
}

/// Eigenvalues of a symmetric matrix: Householder tridiagonalization, then the implicit QL
/// iteration with Wilkinson shifts.
fn symmetric_eigenvalues(mut a: Mat) -> Result<Vec<f64>> {
    let n = a.r;
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    let mut v = vec![0.0; n];
    let mut p = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        d[k] = a.at(k, k);
        let m = n - k - 1;
        let x: Vec<f64> = (k + 1..n).map(|i| a.at(i, k)).collect();
        let norm = x.iter().map(|t| t * t).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            continue;
        }
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        e[k] = alpha;
        v[..m].copy_from_slice(&x);
        v[0] -= alpha;
        let vn = v[..m].iter().map(|t| t * t).sum::<f64>().sqrt();
        v[..m].iter_mut().for_each(|t| *t /= vn);
        // Trailing block A₂₂ ← H A₂₂ H with H = I − 2vvᵀ: A₂₂ − 2(v wᵀ + w vᵀ),
        // w = p − (vᵀp) v, p = A₂₂ v.
        for (i, pi) in p[..m].iter_mut().enumerate() {
            let row = &a.v[(k + 1 + i) * n + k + 1..(k + 1 + i) * n + n];
            *pi = dot(row, &v[..m]);
        }
        let kk = dot(&p[..m], &v[..m]);
        for (pi, vi) in p[..m].iter_mut().zip(&v[..m]) {
            *pi -= kk * vi;
        }
        for i in 0..m {
            let (vi, wi) = (v[i], p[i]);
            let row = &mut a.v[(k + 1 + i) * n + k + 1..(k + 1 + i) * n + n];
            for ((r, &vj), &wj) in row.iter_mut().zip(&v[..m]).zip(&p[..m]) {
                *r -= 2.0 * (vi * wj + wi * vj);
            }
        }
    }
    if n >= 2 {
        d[n - 2] = a.at(n - 2, n - 2);
        e[n - 2] = a.at(n - 1, n - 2);
    }
    d[n - 1] = a.at(n - 1, n - 1);
    e[n - 1] = 0.0;
    tridiagonal_ql(&mut d, &mut e)?;
    Ok(d)
}

/// Eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and off-diagonal `e`
/// (`e[i]` couples `i` and `i + 1`; `e[n − 1]` is ignored), in place in `d`.
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64]) -> Result<()> {
    let n = d.len();
    e[n - 1] = 0.0;
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 100 {
                return Err(Error::Samples(
                    "eigenvalue iteration did not converge".into(),
                ));
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

/// KID: mean and standard deviation of the unbiased MMD² over random subsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// splitmix64: a small seeded generator for the subset draws.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `m` distinct indices of `0..n` (a partial Fisher–Yates shuffle).
    fn choose(&mut self, n: usize, m: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..m {
            let j = i + (self.next() % (n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(m);
        idx
    }
}

/// Kernel matrix `(x·y / d + 1)³` between all rows of `a` and all rows of `b`.
fn poly_kernel(a: &Rows, b: &Rows) -> Mat {
    let to64 = |x: &Rows| Mat {
        r: x.len(),
        c: x.dim,
        v: x.data.iter().map(|&v| f64::from(v)).collect(),
    };
    let mut k = to64(a).mul_t(&to64(b));
    let inv_d = 1.0 / a.dim as f64;
    k.v.iter_mut().for_each(|v| *v = (*v * inv_d + 1.0).powi(3));
    k
}

/// Kernel Inception Distance between two feature sets: `subsets` draws of
/// `min(subset_size, |a|, |b|)` rows of each set (without replacement, seeded).
///
/// # Errors
/// [`Error::Samples`] for mismatched dimensions or fewer than 2 rows in a set.
pub fn kid(a: Rows, b: Rows, subsets: usize, subset_size: usize, seed: u64) -> Result<Kid> {
    same_dim(&a, &b, 2, "KID")?;
    let m = subset_size.min(a.len()).min(b.len()).max(2);
    let subsets = subsets.max(1);
    // All kernel values once; every subset only indexes them.
    let kaa = poly_kernel(&a, &a);
    let kbb = poly_kernel(&b, &b);
    let kab = poly_kernel(&a, &b);
    let mut rng = SplitMix(seed);
    let mut mmds = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let ia = rng.choose(a.len(), m);
        let ib = rng.choose(b.len(), m);
        let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
        for (p, &i) in ia.iter().enumerate() {
            for (q, &j) in ia.iter().enumerate() {
                if p != q {
                    xx += kaa.at(i, j);
                }
            }
            for &j in &ib {
                xy += kab.at(i, j);
            }
        }
        for (p, &i) in ib.iter().enumerate() {
            for (q, &j) in ib.iter().enumerate() {
                if p != q {
                    yy += kbb.at(i, j);
                }
            }
        }
        let mf = m as f64;
        mmds.push((xx + yy) / (mf * (mf - 1.0)) - 2.0 * xy / (mf * mf));
    }
    let mean = mmds.iter().sum::<f64>() / mmds.len() as f64;
    let var = mmds.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / mmds.len() as f64;
    if !mean.is_finite() {
        return Err(Error::Samples("features are not finite".into()));
    }
    Ok(Kid {
        mean,
        std: var.sqrt(),
        subsets,
        subset_size: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng_mat(n: usize, seed: u64) -> Mat {
        let mut r = SplitMix(seed);
        let v = (0..n * n)
            .map(|_| (r.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
            .collect();
        Mat { r: n, c: n, v }
    }

    /// Q diag(λ) Qᵀ with Q a product of random Householder reflections: known eigenvalues.
    #[test]
    fn eigenvalues_of_a_rotated_diagonal() {
        for n in [1, 2, 3, 7, 40] {
            let lambda: Vec<f64> = (0..n).map(|i| (i as f64 - 3.0) * 1.5 + 0.25).collect();
            let mut a = Mat {
                r: n,
                c: n,
                v: vec![0.0; n * n],
            };
            for (i, &l) in lambda.iter().enumerate() {
                a.v[i * n + i] = l;
            }
            let g = rng_mat(n, 7 + n as u64);
            for h in 0..3.min(n) {
                let v: Vec<f64> = (0..n).map(|j| g.at(h, j)).collect();
                let vv = dot(&v, &v);
                // A ← H A H with H = I − 2 v vᵀ / vᵀv.
                let mut ha = a.clone();
                for i in 0..n {
                    for j in 0..n {
                        let s: f64 = (0..n).map(|k| v[k] * a.at(k, j)).sum();
                        ha.v[i * n + j] = a.at(i, j) - 2.0 * v[i] * s / vv;
                    }
                }
                for i in 0..n {
                    for j in 0..n {
                        let s: f64 = (0..n).map(|k| ha.at(i, k) * v[k]).sum();
                        a.v[i * n + j] = ha.at(i, j) - 2.0 * s * v[j] / vv;
                    }
                }
            }
            let mut got = symmetric_eigenvalues(a).unwrap();
            got.sort_by(f64::total_cmp);
            for (g, w) in got.iter().zip(&lambda) {
                assert!((g - w).abs() < 1e-9, "n {n}: {got:?} vs {lambda:?}");
            }
        }
    }

    fn uniform(n: usize, d: usize, scale: &[f64], seed: u64) -> Vec<f32> {
        let mut r = SplitMix(seed);
        (0..n * d)
            .map(|i| ((r.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale[i % d])
            .map(|v| v as f32)
            .collect()
    }

    /// In one dimension FID is (μ₁ − μ₂)² + (σ₁ − σ₂)².
    #[test]
    fn fid_in_one_dimension_is_the_closed_form() {
        let a = uniform(50, 1, &[1.0], 1);
        let b: Vec<f32> = uniform(70, 1, &[3.0], 2).iter().map(|v| v + 0.7).collect();
        let moments = |x: &[f32]| {
            let n = x.len() as f64;
            let m = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let v = x.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / (n - 1.0);
            (m, v.sqrt())
        };
        let ((m1, s1), (m2, s2)) = (moments(&a), moments(&b));
        let want = (m1 - m2).powi(2) + (s1 - s2).powi(2);
        let got = fid(Rows::new(&a, 1).unwrap(), Rows::new(&b, 1).unwrap()).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }

    /// Both factorizations (centred rows when N ≤ d, Cholesky when N > d) give the same
    /// distance: zero columns appended to the features change nothing but the path.
    #[test]
    fn fid_is_the_same_through_both_factorizations() {
        let d = 5;
        let a = uniform(30, d, &[1.0, 2.0, 0.5, 1.0, 3.0], 3);
        let b = uniform(40, d, &[2.0, 1.0, 1.0, 0.1, 3.0], 4);
        let chol = fid(Rows::new(&a, d).unwrap(), Rows::new(&b, d).unwrap()).unwrap();
        let widen = |x: &[f32], extra: usize| -> Vec<f32> {
            x.chunks(d)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, extra)))
                .collect()
        };
        let wide = 60;
        let rows_path = fid(
            Rows::new(&widen(&a, wide - d), wide).unwrap(),
            Rows::new(&widen(&b, wide - d), wide).unwrap(),
        )
        .unwrap();
        assert!(chol > 0.1, "{chol}");
        assert!(
            (chol - rows_path).abs() < 1e-9 * chol,
            "{chol} vs {rows_path}"
        );
        let same = fid(Rows::new(&a, d).unwrap(), Rows::new(&a, d).unwrap()).unwrap();
        assert!(same.abs() < 1e-9, "FID of a set with itself: {same}");
    }

    #[test]
    fn kid_is_zero_in_expectation_for_one_set_and_positive_for_shifted_sets() {
        let d = 8;
        let mut r = SplitMix(3);
        let mut gen = |n: usize, shift: f64| -> Vec<f32> {
            (0..n * d)
                .map(|_| ((r.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5 + shift) as f32)
                .collect()
        };
        let a = gen(200, 0.0);
        let b = gen(200, 0.0);
        let c = gen(200, 1.0);
        let (ra, rb, rc) = (
            Rows::new(&a, d).unwrap(),
            Rows::new(&b, d).unwrap(),
            Rows::new(&c, d).unwrap(),
        );
        let same = kid(ra, rb, 20, 100, 1).unwrap();
        let diff = kid(ra, rc, 20, 100, 1).unwrap();
        assert!(same.mean.abs() < 3.0 * same.std.max(1e-4), "{same:?}");
        assert!(
            diff.mean > 20.0 * same.mean.abs().max(same.std),
            "{diff:?} vs {same:?}"
        );
        assert_eq!(diff.subset_size, 100);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let a = vec![0.0f32; 10];
        assert!(Rows::new(&a, 3).is_err());
        let one = Rows::new(&a[..5], 5).unwrap();
        assert!(fid(one, one).is_err());
        let b = vec![0.0f32; 12];
        assert!(kid(
            Rows::new(&a, 5).unwrap(),
            Rows::new(&b, 6).unwrap(),
            1,
            10,
            0
        )
        .is_err());
    }
}
