//! Convolutions and transposed convolutions as implicit GEMM over NHWC maps.
//!
//! An output row is computed in tiles of `MR` pixels × `NV·16` channels. In NHWC a kernel row
//! of a k×k convolution covers `k·C_in` *contiguous* input floats, so the GEMM's A operand
//! (im2col) never has to be built: the tile reads it straight from the padded input, one K
//! segment per kernel row. Weights are packed once, at load time, into panels of `NV·16`
//! output channels.
//!
//! A transposed convolution with stride `s` is split into `s²` output phases (output pixels
//! with the same `(y mod s, x mod s)`); each phase is an ordinary stride-1 convolution of the
//! zero-padded input with the taps of the kernel that reach it, so no zeros are inserted and
//! no multiplication is wasted.

use std::borrow::Cow;

use crate::int8::Weights8;
use rayon::prelude::*;

use crate::map::{pad_in, to_bf16, Map, PadMode, Workspace};
use crate::micro::{self, Isa, Tile, TileBf16};
use crate::{Error, Precision, Result};

/// Hyper-parameters of a convolution (square kernels, same stride and padding on both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub pad_mode: PadMode,
    /// Transposed convolution (PyTorch `ConvTranspose2d`, weight `(in, out, k, k)`).
    pub transposed: bool,
    /// Extra output rows/columns of a transposed convolution.
    pub output_padding: usize,
}

impl ConvSpec {
    pub fn new(c_in: usize, c_out: usize, k: usize) -> Self {
        Self {
            c_in,
            c_out,
            k,
            stride: 1,
            padding: 0,
            pad_mode: PadMode::Zero,
            transposed: false,
            output_padding: 0,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn pad(mut self, p: usize, mode: PadMode) -> Self {
        self.padding = p;
        self.pad_mode = mode;
        self
    }
    pub fn transposed(mut self, output_padding: usize) -> Self {
        self.transposed = true;
        self.output_padding = output_padding;
        self
    }

    /// Output size for an `h`×`w` input, or `None` if the input is too small.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (k, s, p) = (self.k, self.stride, self.padding);
        let f = |n: usize| -> Option<usize> {
            if self.transposed {
                ((n.checked_sub(1)?) * s + k + self.output_padding).checked_sub(2 * p)
            } else {
                Some((n + 2 * p).checked_sub(k)? / s + 1)
            }
        };
        let (ho, wo) = (f(h)?, f(w)?);
        (ho > 0 && wo > 0).then_some((ho, wo))
    }

    /// Multiply-accumulates for an `h`×`w` input.
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        match self.output_size(h, w) {
            Some((ho, wo)) if self.transposed => {
                let _ = (ho, wo);
                (h * w * self.c_in * self.c_out * self.k * self.k) as u64
            }
            Some((ho, wo)) => (ho * wo * self.c_in * self.c_out * self.k * self.k) as u64,
            None => 0,
        }
    }
}

/// The taps of one output phase: which padded input rows and columns feed it.
#[derive(Debug, Clone)]
struct Phase {
    /// Padded-input row offsets (relative to `q · in_stride`) of the kernel rows, in the
    /// order the packed weights hold them.
    rows: Vec<usize>,
    /// Padded-input column offset (relative to `t · in_stride`) of the first tap.
    col: usize,
    /// Floats per kernel row: taps × `c_in`.
    klen: usize,
    /// Weights `[panel][rows·klen][nv·16]`.
    packed: Vec<f32>,
    /// The same in bf16 pairs, `[panel][rows·klen/2][nv·16][2]` (empty in f32).
    packed_bf16: Vec<u16>,
}

/// A convolution with its weights packed for this CPU.
#[derive(Debug, Clone)]
pub struct Conv {
    spec: ConvSpec,
    isa: Isa,
    bf16: bool,
    /// int8 tiles (`vnni`: on AVX512_VNNI, else the portable loop of the tests).
    int8: bool,
    vnni: bool,
    nv: usize,
    panels: usize,
    /// Output phase stride (1, or `stride` for a transposed convolution).
    phase_stride: usize,
    /// Input pixels per output step (`stride`, or 1 for a transposed convolution).
    in_stride: usize,
    /// Padding before the first row/column (transposed: derived from the taps).
    lead: usize,
    phases: Vec<Phase>,
    /// Signed input offset of each phase tap (transposed only): `(row offsets, col offsets)`.
    offsets: Vec<(Vec<isize>, Vec<isize>)>,
    bias: Vec<f32>,
    /// int8: each input channel's largest absolute weight (empty otherwise).
    w_absmax: Vec<f32>,
    /// int8: the smoothing factors and the weights quantized with them, fixed by a
    /// calibration pass (see [`Conv::is_int8`]).
    int8_frozen: std::sync::OnceLock<(Vec<f32>, Vec<crate::int8::Weights8>)>,
}

fn choose_nv(isa: Isa, c_out: usize) -> usize {
    if let Isa::Avx2 = isa {
        // 16 ymm registers: 6 pixels × 16 channels (12 accumulators) loads the least per FMA.
        return 1;
    }
    if c_out <= 16 {
        1
    } else if c_out.is_multiple_of(64) {
        4
    } else {
        2
    }
}

impl Conv {
    /// Packs `weight` (PyTorch layout: `(out, in, k, k)`, or `(in, out, k, k)` transposed).
    pub fn new(
        spec: ConvSpec,
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
    ) -> Result<Self> {
        Self::with_isa(spec, weight, bias, precision, Isa::detect())
    }

    /// [`Conv::new`] on a given instruction set (tests compare them).
    pub fn with_isa(
        spec: ConvSpec,
        weight: &[f32],
        bias: Option<&[f32]>,
        precision: Precision,
        isa: Isa,
    ) -> Result<Self> {
        let (ci, co, k, s) = (spec.c_in, spec.c_out, spec.k, spec.stride);
        if ci == 0 || co == 0 || k == 0 || s == 0 {
            return Err(Error::Spec(format!("empty convolution {spec:?}")));
        }
        if weight.len() != ci * co * k * k {
            return Err(Error::Spec(format!(
                "weight has {} values, {spec:?} needs {}",
                weight.len(),
                ci * co * k * k
            )));
        }
        if let Some(b) = bias {
            if b.len() != co {
                return Err(Error::Spec(format!(
                    "bias has {} values, not {co}",
                    b.len()
                )));
            }
        }
        if spec.transposed && spec.pad_mode != PadMode::Zero {
            return Err(Error::Spec("transposed convolutions pad with zeros".into()));
        }
        if !spec.transposed && spec.padding >= k.max(2) * 2 {
            return Err(Error::Spec(format!("padding {} too large", spec.padding)));
        }
        let nv = choose_nv(isa, co);
        let lanes = nv * 16;
        let panels = co.div_ceil(lanes);
        // The weight as [panel][ky][kx][i][lane] (o = panel·lanes + lane, zero past c_out),
        // read in source order (gathering each packed lane straight from PyTorch's layout
        // touched a new cache line per value: 4 % of a training step, which packs on every
        // call). For an ordinary convolution this is already the packed layout.
        let kk2 = k * k;
        let q_all = kk2 * ci;
        let at = |q: usize, o: usize| ((o / lanes) * q_all + q) * lanes + o % lanes;
        let mut wt = vec![0f32; panels * q_all * lanes];
        if spec.transposed {
            // (in, out, k, k): each input's (out, tap) block is transposed to [tap][out] in
            // 8×8 register blocks, then copied in runs of one panel's lanes (scattering each
            // value to its packed place took ~3 % of a training step: every convolution's
            // input gradient is a transposed convolution).
            let mut tmp = vec![0f32; co * kk2];
            for i in 0..ci {
                crate::transpose::transpose_with_isa(
                    &weight[i * co * kk2..][..co * kk2],
                    co,
                    kk2,
                    &mut tmp,
                    isa,
                );
                for (t, row) in tmp.chunks_exact(co).enumerate() {
                    for (p, run) in row.chunks(lanes).enumerate() {
                        let d = at(t * ci + i, p * lanes);
                        wt[d..d + run.len()].copy_from_slice(run);
                    }
                }
            }
        } else {
            // (out, in, k, k) as rows o of q = i·k² + t: each panel's rows are transposed to
            // [q][lane] in 8×8 register blocks, then the rows are reordered to q' = t·ci + i
            // (whole runs of `n` values). The 16×16 scalar tile this replaces took ~3.5 % of a
            // training step, which packs on every call.
            let q_len = ci * kk2;
            let mut tmp = vec![0f32; q_len * lanes.min(co)];
            for p in 0..panels {
                let o0 = p * lanes;
                let n = lanes.min(co - o0);
                let t = &mut tmp[..q_len * n];
                crate::transpose::transpose_with_isa(
                    &weight[o0 * q_len..][..n * q_len],
                    n,
                    q_len,
                    t,
                    isa,
                );
                for (q, run) in t.chunks_exact(n).enumerate() {
                    let (i, tap) = (q / kk2, q % kk2);
                    let d = at(tap * ci + i, o0);
                    wt[d..d + n].copy_from_slice(run);
                }
            }
        }
        // Taps of each phase: (ky list, kx list), in packed order.
        let mut taps: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        let mut offsets = Vec::new();
        let (phase_stride, in_stride, lead) = if spec.transposed {
            let p = spec.padding as isize;
            let si = s as isize;
            let axis = |r: usize| -> (Vec<usize>, Vec<isize>) {
                // Taps reaching output index ≡ r (mod s), by ascending input offset.
                let mut t: Vec<(isize, usize)> = (0..k)
                    .filter(|&kk| (r as isize + p - kk as isize).rem_euclid(si) == 0)
                    .map(|kk| ((r as isize + p - kk as isize).div_euclid(si), kk))
                    .collect();
                t.sort();
                (
                    t.iter().map(|x| x.1).collect(),
                    t.iter().map(|x| x.0).collect(),
                )
            };
            let per: Vec<(Vec<usize>, Vec<isize>)> = (0..s).map(axis).collect();
            let lead = per
                .iter()
                .flat_map(|(_, d)| d.iter())
                .map(|d| (-d).max(0))
                .max()
                .unwrap_or(0) as usize;
            for (ky, dy) in &per {
                for (kx, dx) in &per {
                    taps.push((ky.clone(), kx.clone()));
                    offsets.push((dy.clone(), dx.clone()));
                }
            }
            (s, 1, lead)
        } else {
            taps.push(((0..k).collect(), (0..k).collect()));
            (1, s, spec.padding)
        };
        let mut phases = Vec::new();
        let use_bf16 = precision == Precision::Bf16 && isa.has_bf16();
        let vnni = matches!(isa, Isa::Avx512 { .. }) && crate::int8::has_vnni();
        let use_int8 = precision == Precision::Int8 && (vnni || isa == Isa::Portable);
        for (pi, (kys, kxs)) in taps.iter().enumerate() {
            let klen = kxs.len() * ci;
            let kk = kys.len() * klen;
            let packed = if spec.transposed {
                let mut packed = vec![0f32; panels * kk * lanes];
                for p in 0..panels {
                    for (r, &ky) in kys.iter().enumerate() {
                        for (t, &kx) in kxs.iter().enumerate() {
                            for i in 0..ci {
                                let row = r * klen + t * ci + i;
                                let src = at((ky * k + kx) * ci + i, p * lanes);
                                packed[(p * kk + row) * lanes..][..lanes]
                                    .copy_from_slice(&wt[src..src + lanes]);
                            }
                        }
                    }
                }
                packed
            } else {
                // One phase with every tap in order: rows q = (ky·k + kx)·ci + i.
                std::mem::take(&mut wt)
            };
            let (rows, col) = if spec.transposed {
                let (dy, dx) = &offsets[pi];
                (
                    dy.iter().map(|d| (d + lead as isize) as usize).collect(),
                    dx.first().map_or(0, |d| (d + lead as isize) as usize),
                )
            } else {
                ((0..k).collect(), 0)
            };
            let packed_bf16 = if use_bf16 && klen % 2 == 0 {
                // [panel][pair][lane][2]: rows 2m and 2m + 1 of `packed` interleaved
                // (`kk` is even, so pairs never straddle panels).
                let mut b = vec![0u16; packed.len()];
                interleave_bf16_pairs(&packed, &mut b, lanes);
                b
            } else {
                Vec::new()
            };
            phases.push(Phase {
                rows,
                col,
                klen,
                packed,
                packed_bf16,
            });
        }
        let mut b = vec![0f32; panels * lanes];
        if let Some(bias) = bias {
            b[..co].copy_from_slice(bias);
        }
        let bf16 = use_bf16 && phases.iter().all(|p| !p.packed_bf16.is_empty());
        let int8 = use_int8 && phases.iter().all(|p| p.klen % 4 == 0);
        // Each input channel's largest weight (int8 smoothing).
        let mut w_absmax = vec![0f32; if int8 { ci } else { 0 }];
        if int8 {
            for ph in &phases {
                let kk = ph.rows.len() * ph.klen;
                for (k, row) in ph.packed.chunks_exact(lanes).enumerate() {
                    let m = &mut w_absmax[(k % kk) % ci];
                    *m = row.iter().fold(*m, |m, v| m.max(v.abs()));
                }
            }
        }
        Ok(Self {
            spec,
            isa,
            bf16,
            int8,
            vnni,
            nv,
            panels,
            phase_stride,
            in_stride,
            lead,
            phases,
            offsets,
            bias: b,
            w_absmax,
            int8_frozen: std::sync::OnceLock::new(),
        })
    }

    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The border [`Conv::forward_padded`] expects (transposed convolutions pad themselves:
    /// 0).
    pub fn input_padding(&self) -> (usize, PadMode) {
        if self.spec.transposed {
            (0, PadMode::Zero)
        } else {
            (self.spec.padding, self.spec.pad_mode)
        }
    }

    /// Whether this convolution runs in bf16.
    pub fn is_bf16(&self) -> bool {
        self.bf16
    }

    /// Whether this convolution runs in int8. Its smoothing factors and the weights quantized
    /// with them come from a calibration input (the first input of a pass with a
    /// [`Workspace::calibrating`] workspace, e.g. a photo run through the network once after
    /// loading); every later input is quantized per tensor from its own range after dividing
    /// by those factors. Until then, both are derived from every input anew (exact for that
    /// input, but the weights are quantized again on every call).
    pub fn is_int8(&self) -> bool {
        self.int8
    }

    /// Whether this int8 convolution has been calibrated (always true at other precisions).
    pub fn is_calibrated(&self) -> bool {
        !self.int8 || self.int8_frozen.get().is_some()
    }

    /// Applies the convolution to one image.
    pub fn forward(&self, x: &Map) -> Result<Map> {
        self.forward_ws(x, &Workspace::default())
    }

    /// [`Conv::forward`] with buffers from `ws`.
    pub fn forward_ws(&self, x: &Map, ws: &Workspace) -> Result<Map> {
        let (ho, wo) = self.out_size(x)?;
        let mut out = ws.map(ho, wo, self.spec.c_out);
        self.forward_into_ws(x, &mut out, false, ws)?;
        Ok(out)
    }

    fn out_size(&self, x: &Map) -> Result<(usize, usize)> {
        if x.c != self.spec.c_in {
            return Err(Error::Shape(format!(
                "input has {} channels, the convolution takes {}",
                x.c, self.spec.c_in
            )));
        }
        self.spec
            .output_size(x.h, x.w)
            .ok_or_else(|| Error::Shape(format!("input {}×{} is too small", x.h, x.w)))
    }

    /// The padded input: `(top, bottom, left, right)` so every tap is in range.
    fn padding_for(&self, x: &Map, ho: usize, wo: usize) -> (usize, usize, usize, usize) {
        let sp = &self.spec;
        if !sp.transposed {
            // Rows past the last used one are not needed; padding covers the rest.
            let need = |n_out: usize, n: usize| -> usize {
                let last = (n_out - 1) * sp.stride + sp.k; // padded extent used
                last.saturating_sub(n + sp.padding)
            };
            return (sp.padding, need(ho, x.h), sp.padding, need(wo, x.w));
        }
        let s = self.phase_stride;
        let mut bottom = 0usize;
        let mut right = 0usize;
        for r in 0..s {
            let nq = (ho + s - 1 - r) / s;
            let nt = (wo + s - 1 - r) / s;
            for (pi, (dy, dx)) in self.offsets.iter().enumerate() {
                if pi / s == r {
                    if let (Some(&d), true) = (dy.last(), nq > 0) {
                        let last = nq as isize - 1 + d;
                        bottom = bottom.max((last - (x.h as isize - 1)).max(0) as usize);
                    }
                }
                if pi % s == r {
                    if let (Some(&d), true) = (dx.last(), nt > 0) {
                        let last = nt as isize - 1 + d;
                        right = right.max((last - (x.w as isize - 1)).max(0) as usize);
                    }
                }
            }
        }
        (self.lead, bottom, self.lead, right)
    }

    /// Applies a (non-transposed) convolution to an input that already carries its padding
    /// (e.g. from [`crate::ops::normalize_into_padded`]).
    pub fn forward_padded(&self, xp: &Map, ws: &Workspace) -> Result<Map> {
        let sp = &self.spec;
        if sp.transposed {
            return Err(Error::Spec("forward_padded: transposed convolution".into()));
        }
        if xp.c != sp.c_in {
            return Err(Error::Shape(format!(
                "input has {} channels, the convolution takes {}",
                xp.c, sp.c_in
            )));
        }
        if xp.h < sp.k || xp.w < sp.k {
            return Err(Error::Shape(format!(
                "input {}×{} is too small",
                xp.h, xp.w
            )));
        }
        let (ho, wo) = ((xp.h - sp.k) / sp.stride + 1, (xp.w - sp.k) / sp.stride + 1);
        let mut out = ws.map(ho, wo, sp.c_out);
        let xb = self.bf16.then(|| to_bf16(&xp.data));
        let xq = self.int8.then(|| self.quantize(&xp.data, ws));
        self.run(xp, xb.as_deref(), xq.as_ref(), &mut out, false);
        if let Some((q, _)) = xq {
            q.recycle(ws);
        }
        Ok(out)
    }

    /// A transposed convolution into an output of `ho`×`wo` (any output padding below the
    /// stride, per axis).
    pub fn forward_sized(&self, x: &Map, ho: usize, wo: usize, ws: &Workspace) -> Result<Map> {
        let mut out = ws.map(ho, wo, self.spec.c_out);
        self.forward_into_ws(x, &mut out, false, ws)?;
        Ok(out)
    }

    /// Writes (or, with `accumulate`, adds) the convolution of `x` into `out`.
    pub fn forward_into(&self, x: &Map, out: &mut Map, accumulate: bool) -> Result<()> {
        self.forward_into_ws(x, out, accumulate, &Workspace::default())
    }

    fn forward_into_ws(
        &self,
        x: &Map,
        out: &mut Map,
        accumulate: bool,
        ws: &Workspace,
    ) -> Result<()> {
        let (ho, wo) = self.out_size(x)?;
        // A transposed convolution may produce any output padding below the stride (the
        // input gradient of a strided convolution needs a different one per axis).
        let fits = |got: usize, want: usize| {
            if self.spec.transposed {
                let base = want - self.spec.output_padding;
                got >= base && got < base + self.spec.stride
            } else {
                got == want
            }
        };
        if !fits(out.h, ho) || !fits(out.w, wo) || out.c != self.spec.c_out {
            return Err(Error::Shape("output map has the wrong shape".into()));
        }
        let (ho, wo) = (out.h, out.w);
        let (t, b, l, r) = self.padding_for(x, ho, wo);
        let xp = if (t, b, l, r) == (0, 0, 0, 0) {
            None
        } else {
            Some(pad_in(x, t, b, l, r, self.spec.pad_mode, ws))
        };
        let xr = xp.as_ref().unwrap_or(x);
        let xb = self.bf16.then(|| to_bf16(&xr.data));
        let xq = self.int8.then(|| self.quantize(&xr.data, ws));
        self.run(xr, xb.as_deref(), xq.as_ref(), out, accumulate);
        if let Some((q, _)) = xq {
            q.recycle(ws);
        }
        if let Some(m) = xp {
            ws.recycle(m);
        }
        Ok(())
    }

    /// int8 operands of one call: the input quantized after smoothing, and the weights of
    /// every phase quantized with the same factors (the calibrated ones, else this input's).
    fn quantize<'a>(
        &'a self,
        x: &[f32],
        ws: &Workspace,
    ) -> (crate::int8::Quantized, Cow<'a, [Weights8]>) {
        let ci = self.spec.c_in;
        let lanes = self.nv * 16;
        let range = crate::int8::channel_range(x, ci);
        let derive = || {
            let f = crate::int8::smoothing(&range, &self.w_absmax);
            let w: Vec<Weights8> = self
                .phases
                .iter()
                .map(|ph| {
                    let kk = ph.rows.len() * ph.klen;
                    crate::int8::quantize_weights(&ph.packed, self.panels, kk, lanes, ci, &f)
                })
                .collect();
            (f, w)
        };
        let frozen = if ws.is_calibrating() {
            Some(self.int8_frozen.get_or_init(derive))
        } else {
            self.int8_frozen.get()
        };
        match frozen {
            Some((f, w)) => (
                crate::int8::quantize(x, ci, &range, f, ws),
                Cow::Borrowed(w.as_slice()),
            ),
            None => {
                let (f, w) = derive();
                (crate::int8::quantize(x, ci, &range, &f, ws), Cow::Owned(w))
            }
        }
    }

    #[allow(unsafe_code)]
    fn run(
        &self,
        xp: &Map,
        xb: Option<&[u16]>,
        xq: Option<&(crate::int8::Quantized, Cow<'_, [Weights8]>)>,
        out: &mut Map,
        accumulate: bool,
    ) {
        let ci = self.spec.c_in;
        let co = self.spec.c_out;
        let (wo, wp) = (out.w, xp.w);
        let s = self.phase_stride;
        let lanes = self.nv * 16;
        let mr_max = self.isa.max_mr(self.nv);
        let row_floats = wo * co;
        let in_len = xp.data.len();
        // K chunk: the weights of one chunk (kc × lanes floats) stay in L1 (~24 KiB) while
        // every tile of the task's rows uses them.
        let kc = (6144 / lanes).max(16);
        // Rows per task: enough tiles to reuse each weight chunk, enough tasks for the pool.
        let tiles_per_row = wo.div_ceil(s).div_ceil(mr_max).max(1);
        let threads = rayon::current_num_threads().max(1);
        let mut rows_per_task = 12usize.div_ceil(tiles_per_row).max(1) * s;
        while rows_per_task > s && out.h.div_ceil(rows_per_task) < 4 * threads {
            rows_per_task -= s;
        }
        let zero_bias = vec![0f32; lanes];
        out.data
            .par_chunks_mut(row_floats * rows_per_task)
            .enumerate()
            .for_each(|(task, rows)| {
                let y0 = task * rows_per_task;
                let nrows = rows.len() / row_floats;
                for ry in 0..s {
                    for cx in 0..s {
                        let nt = (wo + s - 1 - cx) / s;
                        if nt == 0 {
                            continue;
                        }
                        let ph = &self.phases[ry * s + cx];
                        let kk = ph.rows.len() * ph.klen;
                        let my_rows: Vec<usize> =
                            (0..nrows).filter(|r| (y0 + r) % s == ry).collect();
                        for p in 0..self.panels {
                            let nvalid = (co - p * lanes).min(lanes);
                            // Chunks: (kernel row, first float, floats).
                            let mut chunks = Vec::new();
                            for (ri, _) in ph.rows.iter().enumerate() {
                                let mut j0 = 0;
                                while j0 < ph.klen {
                                    let n = (ph.klen - j0).min(kc);
                                    // bf16 chunks must hold whole pairs, int8 chunks whole
                                    // quads (klen is a multiple of 4 then).
                                    let n = if self.bf16 && n % 2 == 1 { n + 1 } else { n };
                                    let n = if self.int8 { n.div_ceil(4) * 4 } else { n };
                                    chunks.push((ri, j0, n.min(ph.klen - j0)));
                                    j0 += n;
                                }
                            }
                            if chunks.is_empty() {
                                chunks.push((usize::MAX, 0, 0));
                            }
                            for (ci_idx, &(ri, j0, n)) in chunks.iter().enumerate() {
                                let first = ci_idx == 0;
                                // int8: this chunk's output scales and zero-point terms.
                                let mut scale = [0f32; 64];
                                let mut corr = [0i32; 64];
                                if let (Some((q, w8)), true) = (xq, self.int8 && ri != usize::MAX) {
                                    let w8 = &w8[ry * s + cx];
                                    let quads = kk / 4;
                                    let (r0, r1) =
                                        ((ri * ph.klen + j0) / 4, (ri * ph.klen + j0 + n) / 4);
                                    for l in 0..lanes {
                                        scale[l] = q.scale * w8.scale[p * lanes + l];
                                        let at =
                                            |j: usize| w8.colsum[(p * (quads + 1) + j) * lanes + l];
                                        corr[l] = q.zero * (at(r1) - at(r0));
                                    }
                                }
                                for &r in &my_rows {
                                    let q = (y0 + r) / s;
                                    let seg: [isize; 1] = if ri == usize::MAX {
                                        [0]
                                    } else {
                                        [((q * self.in_stride + ph.rows[ri]) * wp * ci + j0)
                                            as isize]
                                    };
                                    let nseg = usize::from(ri != usize::MAX);
                                    let boff = if ri == usize::MAX {
                                        0
                                    } else {
                                        ri * ph.klen + j0
                                    };
                                    let orow = &mut rows[r * row_floats..(r + 1) * row_floats];
                                    let mut t0 = 0;
                                    while t0 < nt {
                                        let mr = (nt - t0).min(mr_max);
                                        let a_off = (t0 * self.in_stride + ph.col) * ci;
                                        let last = seg[0] as usize
                                            + a_off
                                            + (mr - 1) * self.in_stride * ci
                                            + n;
                                        assert!(nseg == 0 || last <= in_len, "tile out of range");
                                        let c_off = (cx + s * t0) * co + p * lanes;
                                        let bias = if first {
                                            self.bias[p * lanes..].as_ptr()
                                        } else {
                                            zero_bias.as_ptr()
                                        };
                                        let acc = accumulate || !first;
                                        // SAFETY: the tile reads `seg + a_off + m·a_pix + j`
                                        // for j < n, m < mr, all < `last` ≤ the input length
                                        // (checked); B reads `n · lanes` floats of the panel
                                        // from row `boff`; C writes `mr` pixels of `nvalid`
                                        // channels inside this output row.
                                        unsafe {
                                            if let (Some((xq, w8)), true) = (xq, self.int8) {
                                                let t = crate::int8::TileI8 {
                                                    a: xq.q().as_ptr().add(a_off),
                                                    a_pix: self.in_stride * ci,
                                                    segs: seg.as_ptr(),
                                                    nseg,
                                                    klen: n,
                                                    b: w8[ry * s + cx]
                                                        .q
                                                        .as_ptr()
                                                        .add((p * kk + boff) * lanes),
                                                    c: orow.as_mut_ptr().add(c_off),
                                                    c_pix: s * co,
                                                    nvalid,
                                                    bias,
                                                    scale: scale.as_ptr(),
                                                    corr: corr.as_ptr(),
                                                    accumulate: acc,
                                                };
                                                crate::int8::tile(self.vnni, self.nv, mr, &t);
                                            } else if let (Some(xb), true) = (xb, self.bf16) {
                                                let t = TileBf16 {
                                                    a: xb.as_ptr().add(a_off),
                                                    a_pix: self.in_stride * ci,
                                                    segs: seg.as_ptr(),
                                                    nseg,
                                                    klen: n,
                                                    b: ph
                                                        .packed_bf16
                                                        .as_ptr()
                                                        .add((p * kk + boff) * lanes),
                                                    c: orow.as_mut_ptr().add(c_off),
                                                    c_pix: s * co,
                                                    nvalid,
                                                    bias,
                                                    accumulate: acc,
                                                };
                                                micro::tile_bf16(self.nv, mr, &t);
                                            } else {
                                                let t = Tile {
                                                    a: xp.data.as_ptr().add(a_off),
                                                    a_pix: self.in_stride * ci,
                                                    segs: seg.as_ptr(),
                                                    nseg,
                                                    klen: n,
                                                    b: ph
                                                        .packed
                                                        .as_ptr()
                                                        .add((p * kk + boff) * lanes),
                                                    c: orow.as_mut_ptr().add(c_off),
                                                    c_pix: s * co,
                                                    nvalid,
                                                    bias,
                                                    accumulate: acc,
                                                };
                                                micro::tile(self.isa, self.nv, mr, &t);
                                            }
                                        }
                                        t0 += mr;
                                    }
                                }
                            }
                        }
                    }
                }
            });
    }
}

multiversion! {
/// `out[2·(m·lanes + l) + h] = bf16(rows[(2m + h)·lanes + l])`: pairs of rows of `lanes`
/// values interleaved lane by lane and rounded to bf16 (nearest even, NaN kept), the
/// operand layout of `vdpbf16ps`.
fn interleave_bf16_pairs(rows: &[f32], out: &mut [u16], lanes: usize) {
    #[inline(always)]
    fn round(v: f32) -> u16 {
        let b = v.to_bits();
        let r = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
        if v.is_nan() {
            ((b >> 16) | 0x40) as u16
        } else {
            r
        }
    }
    for (dst, src) in out.chunks_exact_mut(2 * lanes).zip(rows.chunks_exact(2 * lanes)) {
        let (r0, r1) = src.split_at(lanes);
        for ((d, &a), &b) in dst.chunks_exact_mut(2).zip(r0).zip(r1) {
            d[0] = round(a);
            d[1] = round(b);
        }
    }
}
}

/// Plain reference convolution (PyTorch semantics) for tests: NCHW in, NCHW out, one image.
pub fn reference(
    spec: &ConvSpec,
    x: &[f32],
    h: usize,
    w: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (ci, co, k, s, p) = (spec.c_in, spec.c_out, spec.k, spec.stride, spec.padding);
    let (ho, wo) = spec.output_size(h, w).expect("size");
    let mut out = vec![0f64; co * ho * wo];
    for o in 0..co {
        for v in &mut out[o * ho * wo..(o + 1) * ho * wo] {
            *v = bias.map_or(0.0, |b| b[o] as f64);
        }
    }
    if spec.transposed {
        for i in 0..ci {
            for iy in 0..h {
                for ix in 0..w {
                    let xv = x[(i * h + iy) * w + ix] as f64;
                    for o in 0..co {
                        for ky in 0..k {
                            for kx in 0..k {
                                let oy = (iy * s + ky) as isize - p as isize;
                                let ox = (ix * s + kx) as isize - p as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                let wv = weight[((i * co + o) * k + ky) * k + kx] as f64;
                                out[(o * ho + oy as usize) * wo + ox as usize] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    } else {
        for o in 0..co {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0f64;
                    for i in 0..ci {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                let (iy, ix) = match spec.pad_mode {
                                    PadMode::Zero => {
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        (iy as usize, ix as usize)
                                    }
                                    PadMode::Reflect => {
                                        (crate::map::reflect(iy, h), crate::map::reflect(ix, w))
                                    }
                                };
                                acc += x[(i * h + iy) * w + ix] as f64
                                    * weight[((o * ci + i) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    out[(o * ho + oy) * wo + ox] += acc;
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}
