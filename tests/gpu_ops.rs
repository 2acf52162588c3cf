//! Every GPU kernel against its CPU reference on awkward shapes: odd sizes, batch 1 and 3,
//! stride 2, channel counts that are not multiples of 4, groups > 1. Each op runs through the
//! executor (forward, then backward from a random upstream gradient).

mod common;

use common::{assert_close, f32_exact, gpu, gradient_plan, randn, rng, to_f32, to_f64};
use kdna::gpu::{Dispatch, copying_each_source_once, record_all, texture_width};
use kdna::graph::{DispatchTime, Executor, Graph, Init, Phase, Plan, TensorId};
use kdna::ops::activation::{Activation, ActivationOp, Add};
use kdna::ops::adamw::AdamW;
use kdna::ops::batchnorm::BatchNorm;
use kdna::ops::conv_gemm::{GemmPlan, WeightReads};
use kdna::ops::conv2d::{Conv2d, Conv2dConfig, Conv2dShape, ConvKernel, Fusion, OutputActivation};
use kdna::ops::layernorm::LayerNorm;
use kdna::ops::linear::Linear;
use kdna::ops::modulate::Modulate;
use kdna::ops::pool::MaxPool2d;
use kdna::ops::sgd::Sgd;
use kdna::ops::{Bound, GradTarget, Grads, Mode, Op};
use kdna::reference as r;
use rand::rngs::StdRng;
use std::sync::{Arc, OnceLock};

/// f32 kernels against the f64 reference; sums run over at most a few thousand terms.
const TOL: f64 = 2e-5;

fn plan(mode: Mode, root: TensorId) -> Plan {
    gradient_plan(mode, vec![root], true)
}

/// Random values, already rounded to f32, written into `t`.
fn feed(exe: &Executor, g: &Graph, t: TensorId, rng: &mut StdRng) -> Vec<f64> {
    let v = f32_exact(randn(rng, g.info(t).numel()));
    exe.write(t, &to_f32(&v)).unwrap();
    v
}

fn seed_grad(exe: &Executor, g: &Graph, t: TensorId, rng: &mut StdRng) -> Vec<f64> {
    let v = f32_exact(randn(rng, g.info(t).numel()));
    exe.write_grad(t, &to_f32(&v)).unwrap();
    v
}

fn read(exe: &Executor, t: TensorId) -> Vec<f64> {
    to_f64(&exe.read(t).unwrap())
}

fn read_grad(exe: &Executor, t: TensorId) -> Vec<f64> {
    to_f64(&exe.read_grad(t).unwrap())
}

/// (x shape, c_out, kernel, config, bias)
type ConvCase = ([usize; 4], usize, (usize, usize), Conv2dConfig, bool);

#[test]
fn conv2d_matches_reference() {
    let cfg = |stride, padding, groups| Conv2dConfig { stride, padding, groups };
    let cases: [ConvCase; 30] = [
        // Depthwise, stride 1 with bias and a 7x7 window (ConvNeXt's).
        ([1, 5, 13, 11], 5, (3, 3), cfg((1, 1), (1, 1), 5), true),
        ([3, 4, 9, 9], 4, (7, 7), cfg((1, 1), (3, 3), 4), true),
        // More than one channel tile on every axis and several pixel workgroups.
        ([1, 21, 17, 19], 18, (3, 3), cfg((1, 1), (1, 1), 1), true),
        ([3, 6, 9, 7], 9, (3, 3), cfg((2, 2), (1, 1), 1), false),
        // Stride 2 without padding: the input gradient's phases start at different dy rows
        // and columns, each with a copy of its own (with padding 1 they share one).
        ([2, 5, 9, 8], 6, (3, 3), cfg((2, 2), (0, 0), 1), false),
        ([1, 5, 9, 11], 7, (3, 3), cfg((1, 1), (1, 1), 1), true),
        ([3, 6, 8, 7], 9, (3, 3), cfg((2, 2), (1, 1), 3), false),
        ([3, 6, 7, 5], 6, (3, 3), cfg((2, 2), (1, 1), 6), false), // depthwise
        ([1, 10, 7, 7], 19, (1, 1), cfg((2, 2), (0, 0), 1), false),
        ([2, 8, 5, 6], 12, (1, 1), cfg((1, 1), (0, 0), 1), true),
        ([1, 3, 13, 11], 5, (7, 7), cfg((2, 2), (3, 3), 1), true),
        ([3, 3, 12, 8], 6, (4, 4), cfg((4, 4), (0, 0), 1), true), // ConvNeXt stem
        ([3, 4, 5, 6], 6, (3, 2), cfg((2, 1), (1, 2), 2), true),
        // 2x2 at stride 2 over inputs in fours (ConvNeXt's downsampling): packed a row at a
        // time, where 3x3 weights over inputs in fours are packed by quads.
        ([2, 8, 6, 6], 5, (2, 2), cfg((2, 2), (0, 0), 1), true),
        // Enough pixels for weights in uniform blocks: taps over two blocks, then a tap split
        // over two blocks (more than 64 input quads), five channel tiles in the input gradient.
        ([2, 36, 24, 23], 40, (3, 3), cfg((1, 1), (1, 1), 1), true),
        ([1, 260, 33, 32], 5, (3, 3), cfg((1, 1), (1, 1), 1), false),
        // 13 input quads: four whole taps per block, the fifth opening the second block.
        ([1, 52, 5, 6], 8, (3, 3), cfg((1, 1), (1, 1), 1), true),
        // Narrow tiles (32 channels x 16 pixels) need 1024 pixels or more; fewer take the widest.
        ([2, 20, 24, 24], 24, (3, 3), cfg((1, 1), (1, 1), 1), false),
        // Taps that only ever meet padding are skipped: a 3x3 kernel on 1x1 maps (ResNet's
        // last stage on small images), on 2x1 maps (columns only), and stride 2 on 2x2 maps.
        ([3, 12, 1, 1], 10, (3, 3), cfg((1, 1), (1, 1), 1), true),
        ([2, 9, 2, 1], 7, (3, 3), cfg((1, 1), (1, 1), 1), false),
        ([1, 6, 2, 2], 5, (3, 3), cfg((2, 2), (1, 1), 1), false),
        // 2x2 maps split into four bands of outputs that read the same taps (forward and input
        // gradient), and a stride-2 input gradient whose phases split.
        ([2, 10, 2, 2], 12, (3, 3), cfg((1, 1), (1, 1), 1), true),
        // Bands that share one packing of every tap, forward and input gradient (more than 32
        // input quads each way), with the input gradient's taps split over blocks (more than
        // 64 quads) and its packing written by the forward pass's.
        ([1, 132, 2, 2], 260, (3, 3), cfg((1, 1), (1, 1), 1), false),
        // Two-column maps copy two rows at a time (here two such pairs to a plane).
        ([2, 8, 4, 2], 6, (3, 3), cfg((1, 1), (1, 1), 1), false),
        ([2, 8, 4, 4], 6, (3, 3), cfg((2, 2), (1, 1), 1), false),
        // Reductions over more than one chunk of 16384 batch-wide pixels (the last ragged): a
        // depthwise weight gradient with its bias, and a 1x1 conv's bias.
        ([2, 3, 100, 90], 3, (3, 3), cfg((1, 1), (1, 1), 3), true),
        ([1, 2, 130, 131], 3, (1, 1), cfg((1, 1), (0, 0), 1), true),
        // Depthwise weight gradients over parts of several rows (the last ragged), over one
        // part, and with a window that slides by a stride of 3 (and a stride of 2 that shifts).
        ([2, 1000, 10, 10], 1000, (3, 3), cfg((1, 1), (1, 1), 1000), false),
        ([1, 4, 1, 9], 4, (1, 3), cfg((1, 1), (0, 1), 4), true),
        ([2, 6, 11, 13], 6, (5, 7), cfg((2, 3), (2, 3), 6), true),
    ];
    for (i, &(xs, c_out, k, cfg, bias)) in cases.iter().enumerate() {
        let groups = cfg.groups;
        let mut g = Graph::new();
        let x = g.input("x", &xs);
        let w = g.param("w", &[c_out, xs[1] / groups, k.0, k.1]).unwrap();
        let b = bias.then(|| g.param("b", &[c_out]).unwrap());
        let y = g.conv2d(x, w, b, cfg).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(100 + i as u64);
        let (xv, wv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, w, &mut rng));
        let bv = b.map(|b| feed(&exe, &g, b, &mut rng));
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let s = Conv2dShape::new(&xs, g.shape(w), cfg).unwrap();
        let case = format!("case {i} {s:?}");
        assert_close(&format!("{case} y"), &read(&exe, y), &r::conv2d::forward(&s, &xv, &wv, bv.as_deref()), TOL);
        let (dx, dw, db) = r::conv2d::backward(&s, &xv, &wv, &dy);
        assert_close(&format!("{case} dx"), &read_grad(&exe, x), &dx, TOL);
        assert_close(&format!("{case} dw"), &read_grad(&exe, w), &dw, TOL);
        if let Some(b) = b {
            assert_close(&format!("{case} db"), &read_grad(&exe, b), &db, TOL);
        }

        // With a fused gate on the input and residual (GEMM convolutions) and output activation
        // (eval): exactly the separate ops' values (the gate's product, then the conv, then the
        // add rounded to f32 as the add kernel rounds it).
        let activation = [OutputActivation::Relu, OutputActivation::Relu6][i % 2];
        let gemm = s.kernel() == ConvKernel::Gemm;
        let mut fused = Graph::new();
        let fx = fused.input("x", &xs);
        let fw = fused.param("w", g.shape(w)).unwrap();
        let fb = bias.then(|| fused.param("b", &[c_out]).unwrap());
        let fr = gemm.then(|| fused.input("residual", &s.output()));
        let fgate = gemm.then(|| fused.input("gate", &[xs[0], xs[1]]));
        let fusion = Fusion { gate: fgate, residual: fr, activation };
        let fy = fused.conv2d_fused(fx, fw, fb, cfg, fusion).unwrap();
        let mut fexe = Executor::new(gpu(), &fused, Plan::eval()).unwrap();
        fexe.write(fx, &to_f32(&xv)).unwrap();
        fexe.write(fw, &to_f32(&wv)).unwrap();
        if let (Some(fb), Some(bv)) = (fb, &bv) {
            fexe.write(fb, &to_f32(bv)).unwrap();
        }
        let residual =
            fr.map(|fr| feed(&fexe, &fused, fr, &mut rng)).unwrap_or_else(|| vec![0.0; s.output().iter().product()]);
        let conv_y = match fgate {
            // The separate ops: channel_scale, then the conv.
            Some(fgate) => {
                let gate = feed(&fexe, &fused, fgate, &mut rng);
                let mut sep = Graph::new();
                let (sx, sgate) = (sep.input("x", &xs), sep.input("gate", &[xs[0], xs[1]]));
                let sw = sep.param("w", g.shape(w)).unwrap();
                let sb = bias.then(|| sep.param("b", &[c_out]).unwrap());
                let scaled = sep.channel_scale(sx, sgate).unwrap();
                let sy = sep.conv2d(scaled, sw, sb, cfg).unwrap();
                let mut sexe = Executor::new(gpu(), &sep, Plan::eval()).unwrap();
                for (t, v) in [(sx, &xv), (sgate, &gate), (sw, &wv)] {
                    sexe.write(t, &to_f32(v)).unwrap();
                }
                if let (Some(sb), Some(bv)) = (sb, &bv) {
                    sexe.write(sb, &to_f32(bv)).unwrap();
                }
                sexe.run().unwrap();
                read(&sexe, sy)
            }
            None => read(&exe, y),
        };
        fexe.run().unwrap();
        let want: Vec<f64> =
            (conv_y.iter().zip(&residual)).map(|(&v, &r)| activate(activation, (v as f32 + r as f32) as f64)).collect();
        let got = read(&fexe, fy);
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{case}: {activation:?} fused values that differ from the separate activation");
    }
}

/// A convolution of a graph input over few channels (a stem) folds its kernel's columns into
/// its channels when the input has no gradient (`GemmPlan::folding_columns`): values and
/// weight and bias gradients still match the reference, with several folded channel quads, a
/// source column the windows never reach, odd sizes, a fused activation in eval, and kernels
/// wider than their stride.
#[test]
fn convolutions_with_columns_folded_into_channels_match_reference() {
    let cfg = |stride, padding| Conv2dConfig { stride, padding, groups: 1 };
    let cases: [ConvCase; 5] = [
        // ResNet's stem: 21 folded channels in 6 quads, 7 taps.
        ([2, 3, 13, 11], 5, (7, 7), cfg((2, 2), (3, 3)), true),
        // ConvNeXt's stem: 12 channels, whole quads; the last source column never read.
        ([3, 3, 12, 9], 6, (4, 4), cfg((4, 4), (0, 0)), false),
        // One channel, a 3x5 kernel at column stride 3 (windows that skip columns).
        ([2, 1, 7, 16], 9, (3, 5), cfg((1, 3), (1, 2)), true),
        // Two channels, more output channels than a tile and an output wider than its stride.
        ([1, 2, 9, 10], 70, (5, 3), cfg((2, 1), (2, 1)), false),
        // A 1x6 kernel over 2 channels: folded, a 1x1 convolution over 12 channels in whole
        // quads (the reduction that stores 1x1 weights by quads must not take it).
        ([2, 2, 6, 6], 4, (1, 6), cfg((1, 2), (0, 2)), true),
    ];
    for (i, &(xs, c_out, k, cfg, bias)) in cases.iter().enumerate() {
        let s = Conv2dShape::new(&xs, &[c_out, xs[1], k.0, k.1], cfg).unwrap();
        assert!(GemmPlan::folds_columns(&s), "case {i} {s:?} folds its columns");
        for mode in [Mode::Train, Mode::Eval] {
            let mut g = Graph::new();
            let x = g.input("x", &xs);
            let w = g.param("w", &[c_out, xs[1], k.0, k.1]).unwrap();
            let b = bias.then(|| g.param("b", &[c_out]).unwrap());
            let activation = if mode == Mode::Eval { OutputActivation::Relu } else { OutputActivation::None };
            let fusion = Fusion { activation, ..Fusion::default() };
            let y = g.conv2d_fused(x, w, b, cfg, fusion).unwrap();
            let plan = match mode {
                Mode::Train => gradient_plan(mode, vec![y], false),
                Mode::Eval => Plan::eval(),
            };
            let mut exe = Executor::new(gpu(), &g, plan).unwrap();
            let mut rng = rng(700 + i as u64);
            let (xv, wv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, w, &mut rng));
            let bv = b.map(|b| feed(&exe, &g, b, &mut rng));
            let case = format!("case {i} {mode:?} {s:?}");
            let want: Vec<f64> =
                r::conv2d::forward(&s, &xv, &wv, bv.as_deref()).into_iter().map(|v| activate(activation, v)).collect();
            if mode == Mode::Train {
                let dy = seed_grad(&exe, &g, y, &mut rng);
                exe.run().unwrap();
                let (_, dw, db) = r::conv2d::backward(&s, &xv, &wv, &dy);
                assert_close(&format!("{case} dw"), &read_grad(&exe, w), &dw, TOL);
                if let Some(b) = b {
                    assert_close(&format!("{case} db"), &read_grad(&exe, b), &db, TOL);
                }
            } else {
                exe.run().unwrap();
            }
            assert_close(&format!("{case} y"), &read(&exe, y), &want, TOL);
            let labels: Vec<&str> = exe.profile().unwrap().into_iter().map(|d| d.kernel).collect();
            assert!(labels.contains(&"to_channels_last_folded"), "{case}: the columns were not folded: {labels:?}");
        }
    }
}

/// Depthwise convolutions run row kernels on software adapters and 8-pixel tiles on GPUs
/// (`Gpu::depthwise_rows`): the forward pass and the input gradient sum the same terms in the
/// same order in both, bit for bit; the weight gradients (summed in different orders) both match
/// the reference. Runs this adapter's family and, on a second device, the other.
#[test]
fn depthwise_families_agree() {
    let shared = gpu();
    let mut other = kdna::gpu::Gpu::new(None).expect("a second device on the test adapter");
    other.depthwise_rows = !shared.depthwise_rows;
    let devices = [shared, std::sync::Arc::new(other)];
    let cfg = |stride, padding, c| Conv2dConfig { stride, padding, groups: c };
    let cases: [ConvCase; 5] = [
        ([2, 5, 13, 11], 5, (3, 3), cfg((1, 1), (1, 1), 5), true),
        ([3, 4, 9, 10], 4, (7, 7), cfg((1, 1), (3, 3), 4), false),
        // Stride 2 on odd and even sizes (a last dx row and column that one dy row or column
        // reaches, or two).
        ([2, 6, 9, 7], 6, (3, 3), cfg((2, 2), (1, 1), 6), true),
        ([3, 7, 8, 6], 7, (3, 3), cfg((2, 2), (1, 1), 7), false),
        ([2, 3, 11, 13], 3, (5, 7), cfg((2, 3), (2, 3), 3), false),
    ];
    for (i, &(xs, c_out, k, cfg, bias)) in cases.iter().enumerate() {
        let results: Vec<_> = devices
            .iter()
            .map(|device| {
                let mut g = Graph::new();
                let x = g.input("x", &xs);
                let w = g.param("w", &[c_out, 1, k.0, k.1]).unwrap();
                let b = bias.then(|| g.param("b", &[c_out]).unwrap());
                let y = g.conv2d(x, w, b, cfg).unwrap();
                let mut exe = Executor::new(device.clone(), &g, plan(Mode::Train, y)).unwrap();
                let mut rng = rng(300 + i as u64);
                let (xv, wv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, w, &mut rng));
                let bv = b.map(|b| feed(&exe, &g, b, &mut rng));
                let dy = seed_grad(&exe, &g, y, &mut rng);
                exe.run().unwrap();
                let s = Conv2dShape::new(&xs, g.shape(w), cfg).unwrap();
                let (_, want_dw, _) = r::conv2d::backward(&s, &xv, &wv, &dy);
                let dw = read_grad(&exe, w);
                assert_close(&format!("case {i} dw, rows {}", device.depthwise_rows), &dw, &want_dw, TOL);
                assert_close(
                    &format!("case {i} y"),
                    &read(&exe, y),
                    &r::conv2d::forward(&s, &xv, &wv, bv.as_deref()),
                    TOL,
                );
                [read(&exe, y), read_grad(&exe, x)]
            })
            .collect();
        for (name, (a, b)) in ["forward", "input gradient"].iter().zip(results[0].iter().zip(&results[1])) {
            let differing = a.iter().zip(b).filter(|(p, q)| p.to_bits() != q.to_bits()).count();
            assert_eq!(differing, 0, "case {i}: {name} values that differ between the depthwise families");
        }
    }
}

/// A depthwise convolution's forward pass (`has_bias`, `activation`) into y and, at stride 1,
/// its input gradient from dy added to dx: what the depthwise device-pair tests run on each
/// device. `inputs`: x, w, bias, dy, dx, y.
fn depthwise_passes(
    gpu: &kdna::gpu::Gpu,
    shape: Conv2dShape,
    has_bias: bool,
    activation: OutputActivation,
    [x, w, bias, dy, dx, y]: [&kdna::gpu::GpuSlice; 6],
) -> Vec<Dispatch> {
    let inputs = if has_bias { vec![x, w, bias] } else { vec![x, w] };
    let bound = Bound { inputs, outputs: vec![y], scratch: vec![] };
    let mut dispatches = Conv2d::plain(shape, has_bias, activation).forward(gpu, &bound, Mode::Eval);
    if shape.cfg.stride == (1, 1) {
        let target = GradTarget { slice: dx, accumulate: true };
        let grads = Grads { outputs: vec![dy], inputs: vec![Some(target), None] };
        let op = Conv2d::plain(shape, false, OutputActivation::None);
        dispatches.extend(op.backward(gpu, &bound, &grads, Mode::Train));
    }
    dispatches
}

/// Checks what [`depthwise_passes`] left against the reference: y, and at stride 1 what the
/// input gradient added to dx (`dx0` before).
#[allow(clippy::too_many_arguments)]
fn assert_depthwise_passes_match_reference(
    case: usize,
    shape: &Conv2dShape,
    [xv, wv, bv, dyv, dx0]: [&[f64]; 5],
    has_bias: bool,
    activation: OutputActivation,
    y: &[f64],
    dx: &[f64],
) {
    let want_y: Vec<f64> = r::conv2d::forward(shape, xv, wv, has_bias.then_some(bv))
        .into_iter()
        .map(|v| activate(activation, v))
        .collect();
    assert_close(&format!("case {case} y"), y, &want_y, TOL);
    if shape.cfg.stride == (1, 1) {
        let (want_dx, _, _) = r::conv2d::backward(shape, xv, wv, dyv);
        let added: Vec<f64> = dx.iter().zip(dx0).map(|(a, b)| a - b).collect();
        assert_close(&format!("case {case} dx"), &added, &want_dx, TOL);
    }
}

/// Depthwise 3x3 rows that come in fours (MobileNetV2's) read their input through a texture
/// and compute four outputs at once where the device reads streams so: the same values as
/// `depthwise_rows_3x3`, for the forward pass at strides 1 and 2 (bias, output activation) and
/// the stride-1 input gradient added to one already there; a row of 10 keeps the scalar kernel.
#[test]
fn depthwise_rows_reading_textures_change_no_value() {
    let devices = [true, false].map(|texture_reads| {
        let mut device = kdna::gpu::Gpu::new(None).expect("a device on the test adapter");
        (device.depthwise_rows, device.texture_reads) = (true, texture_reads);
        device
    });
    let cfg = |stride, c| Conv2dConfig { stride: (stride, stride), padding: (1, 1), groups: c };
    let cases = [
        ([2, 5, 8, 12], cfg(1, 5), true, OutputActivation::Relu6, true),
        ([3, 6, 6, 16], cfg(2, 6), false, OutputActivation::Relu, true),
        ([2, 4, 7, 10], cfg(1, 4), true, OutputActivation::Gelu, false),
    ];
    for (i, (xs, cfg, has_bias, activation, quads)) in cases.into_iter().enumerate() {
        let shape = Conv2dShape::new(&xs, &[xs[1], 1, 3, 3], cfg).unwrap();
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let mut rng = rng(1400 + i as u64);
        let [xv, wv, bv, dyv, dx0] =
            [numel(&xs), 9 * xs[1], xs[1], numel(&shape.output()), numel(&xs)].map(|n| f32_exact(randn(&mut rng, n)));
        let results = devices.each_ref().map(|gpu| {
            let [x, w, bias, dy, dx] = [&xv, &wv, &bv, &dyv, &dx0].map(|v| gpu.upload("input", &to_f32(v)));
            let y = gpu.storage("y", numel(&shape.output()));
            let dispatches = depthwise_passes(gpu, shape, has_bias, activation, [&x, &w, &bias, &dy, &dx, &y]);
            let entries: Vec<_> = dispatches.iter().map(|d| d.label).collect();
            let want: &[&str] = match (quads && gpu.texture_reads, cfg.stride.0) {
                (false, _) => &["depthwise_rows_3x3"; 2],
                (true, 1) => &["depthwise_rows_3x3_quads_textured", "depthwise_rows_3x3_flipped_quads_textured"],
                (true, _) => &["depthwise_rows_3x3_s2_quads_textured"],
            };
            assert_eq!(entries, want[..entries.len()], "case {i}, texture reads {}", gpu.texture_reads);
            gpu.run(&dispatches);
            [&y, &dx].map(|b| gpu.read::<f32>(b).unwrap().into_iter().map(f64::from).collect::<Vec<_>>())
        });
        for (name, (a, b)) in ["y", "dx"].iter().zip(results[0].iter().zip(&results[1])) {
            assert_eq!(bits_differ(a, b), 0, "case {i}: {name} values that differ between the ways");
        }
        let [y, dx] = &results[0];
        let values = [&xv[..], &wv, &bv, &dyv, &dx0];
        assert_depthwise_passes_match_reference(i, &shape, values, has_bias, activation, y, dx);
    }
}

/// Depthwise 7x7 kernels at column stride 1 (ConvNeXt's) take `depthwise_rows_7x7` on software
/// adapters, and their stride-1 input gradient its flipped twin: the same values as the GPU
/// family (which sums the same terms in the same order), on maps wider and narrower than the
/// kernel, ragged rows, a row stride of 2, bias and a fused activation, and an input gradient
/// added to one already there. Their weight gradient (`depthwise_weight_rows_7x7`) matches the
/// reference.
#[test]
fn depthwise_7x7_rows_agree_with_the_gpu_family_bit_for_bit() {
    let devices = [true, false].map(|rows| {
        let mut device = kdna::gpu::Gpu::new(None).expect("a device on the test adapter");
        device.depthwise_rows = rows;
        device
    });
    let cfg = |stride: (usize, usize), c| Conv2dConfig { stride, padding: (3, 3), groups: c };
    let cases = [
        ([2, 5, 16, 13], cfg((1, 1), 5), true, OutputActivation::Gelu),
        ([3, 4, 2, 2], cfg((1, 1), 4), false, OutputActivation::None),
        ([1, 3, 1, 9], cfg((1, 1), 3), true, OutputActivation::Relu),
        ([2, 6, 11, 8], cfg((2, 1), 6), true, OutputActivation::None),
    ];
    for (i, (xs, cfg, has_bias, activation)) in cases.into_iter().enumerate() {
        let shape = Conv2dShape::new(&xs, &[xs[1], 1, 7, 7], cfg).unwrap();
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let mut rng = rng(1500 + i as u64);
        let [xv, wv, bv, dyv, dx0] =
            [numel(&xs), 49 * xs[1], xs[1], numel(&shape.output()), numel(&xs)].map(|n| f32_exact(randn(&mut rng, n)));
        let results = devices.each_ref().map(|gpu| {
            let [x, w, bias, dy, dx] = [&xv, &wv, &bv, &dyv, &dx0].map(|v| gpu.upload("input", &to_f32(v)));
            let y = gpu.storage("y", numel(&shape.output()));
            let mut dispatches = depthwise_passes(gpu, shape, has_bias, activation, [&x, &w, &bias, &dy, &dx, &y]);
            let op = |has_bias, activation| Conv2d::plain(shape, has_bias, activation);
            if gpu.depthwise_rows {
                let entries: Vec<_> = dispatches.iter().map(|d| d.label).collect();
                let want = ["depthwise_rows_7x7", "depthwise_rows_7x7_flipped"];
                assert_eq!(entries, want[..entries.len()], "case {i}: the row kernels");
            }
            // The weight gradient (each family its own order of sums: checked against the
            // reference below).
            let dw = gpu.storage("dw", 49 * xs[1]);
            let scratch: Vec<_> =
                op(false, OutputActivation::None).scratch(true).iter().map(|&n| gpu.storage("scratch", n)).collect();
            let bound = Bound { inputs: vec![&x, &w], outputs: vec![&y], scratch: scratch.iter().collect() };
            let target = GradTarget { slice: &dw, accumulate: false };
            let grads = Grads { outputs: vec![&dy], inputs: vec![None, Some(target)] };
            let weight_gradient = op(false, OutputActivation::None).backward(gpu, &bound, &grads, Mode::Train);
            if gpu.depthwise_rows {
                assert_eq!(
                    weight_gradient[0].label, "depthwise_weight_rows_7x7",
                    "case {i}: the weight gradient's kernel"
                );
            }
            dispatches.extend(weight_gradient);
            gpu.run(&dispatches);
            [&y, &dx, &dw].map(|b| gpu.read::<f32>(b).unwrap().into_iter().map(f64::from).collect::<Vec<_>>())
        });
        for (name, (a, b)) in ["y", "dx"].iter().zip(results[0].iter().zip(&results[1])) {
            assert_eq!(bits_differ(a, b), 0, "case {i}: {name} values that differ between the families");
        }
        let [y, dx, _] = &results[0];
        let values = [&xv[..], &wv, &bv, &dyv, &dx0];
        assert_depthwise_passes_match_reference(i, &shape, values, has_bias, activation, y, dx);
        let (_, want_dw, _) = r::conv2d::backward(&shape, &xv, &wv, &dyv);
        for (family, result) in ["rows", "GPU"].iter().zip(&results) {
            assert_close(&format!("case {i} dw ({family} family)"), &result[2], &want_dw, TOL);
        }
    }
}

/// The ways an ungrouped conv reads its weights (uniform blocks, one dispatch each; all from
/// storage in one dispatch; the same with subgroup broadcasts, which the weight gradient uses
/// too; workgroup-memory tiles) sum in the same order, so which one a shape gets never changes
/// a result: forward with bias, an input gradient added to one already there, and the weight
/// gradient. Shapes: more input quads than a weight block's steps, a stride, fewer outputs
/// than a tile; several pixel and channel tiles, each with a ragged end; more than 64 channels
/// on both sides (two weight tiles per workgroup, an odd count of them). The forward passes
/// add a residual and apply an output activation (uniform blocks: in the last block only).
/// A weight two convolutions share gets the sum of both gradients, whichever runs its backward
/// pass first: a 2x2 map's (nine passes, each with partial sums of one tap) and a larger
/// map's (partial sums over chunks). Input channels off a multiple of four (the reduction's
/// scalar stores) and on one (vec4 stores: 3x3 and 1x1 kernels).
#[test]
fn a_conv_weight_used_twice_gets_both_gradients() {
    for (c_in, kernel) in [(6, 3), (8, 3), (8, 1)] {
        let pad = kernel / 2;
        let small = ([2, c_in, 2, 2], Conv2dConfig::new(1, pad));
        let large = ([2, c_in, 24, 22], Conv2dConfig::new(2, pad));
        for (i, order) in [[small, large], [large, small]].into_iter().enumerate() {
            let mut g = Graph::new();
            let w = g.param("w", &[5, c_in, kernel, kernel]).unwrap();
            let xs = order.map(|(shape, _)| g.input("x", &shape));
            let ys: Vec<TensorId> = (0..2).map(|k| g.conv2d(xs[k], w, None, order[k].1).unwrap()).collect();
            let pooled: Vec<TensorId> = ys.iter().map(|&y| g.global_avgpool(y).unwrap()).collect();
            let out = g.add(pooled[0], pooled[1]).unwrap();
            let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, out)).unwrap();
            let mut rng = rng(150 + i as u64);
            let xv = xs.map(|x| feed(&exe, &g, x, &mut rng));
            let wv = feed(&exe, &g, w, &mut rng);
            let dout = seed_grad(&exe, &g, out, &mut rng);
            exe.run().unwrap();
            let mut want = vec![0.0; wv.len()];
            for k in 0..2 {
                let s = Conv2dShape::new(&order[k].0, g.shape(w), order[k].1).unwrap();
                let dy = r::pool::global_avgpool_backward(&dout, s.out_h * s.out_w);
                let (_, dw, _) = r::conv2d::backward(&s, &xv[k], &wv, &dy);
                want.iter_mut().zip(dw).for_each(|(sum, d)| *sum += d);
            }
            assert_close(&format!("{c_in} channels, {kernel}x{kernel}, order {i} dw"), &read_grad(&exe, w), &want, TOL);
        }
    }
}

/// An input read by a 1x1 convolution at stride 2, which reaches one of its four input
/// phases, and by a 3x3 one: dx sums both, whichever convolution writes first (the one built
/// last). The 1x1 one's other phases write zeros when it writes first, and nothing when it
/// adds. Two runs, so that the second starts from the first's gradients.
#[test]
fn an_input_read_by_two_strided_convs_gets_both_gradients() {
    for one_by_one_built_first in [true, false] {
        let mut g = Graph::new();
        let x = g.input("x", &[2, 6, 7, 7]);
        let kernels = if one_by_one_built_first { [1, 3] } else { [3, 1] };
        let ws = kernels.map(|k| g.param(&format!("w{k}"), &[5, 6, k, k]).unwrap());
        let cfgs = kernels.map(|k| Conv2dConfig::new(2, k / 2));
        let ys: Vec<TensorId> = (0..2).map(|i| g.conv2d(x, ws[i], None, cfgs[i]).unwrap()).collect();
        let out = g.add(ys[0], ys[1]).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, out)).unwrap();
        let mut rng = rng(170 + one_by_one_built_first as u64);
        let mut want = Vec::new();
        for _ in 0..2 {
            let xv = feed(&exe, &g, x, &mut rng);
            let wv = ws.map(|w| feed(&exe, &g, w, &mut rng));
            let dy = seed_grad(&exe, &g, out, &mut rng);
            exe.run().unwrap();
            want = vec![0.0; xv.len()];
            for i in 0..2 {
                let s = Conv2dShape::new(&[2, 6, 7, 7], g.shape(ws[i]), cfgs[i]).unwrap();
                let (dx, _, _) = r::conv2d::backward(&s, &xv, &wv[i], &dy);
                want.iter_mut().zip(dx).for_each(|(sum, d)| *sum += d);
            }
        }
        assert_close(&format!("1x1 built first: {one_by_one_built_first}, dx"), &read_grad(&exe, x), &want, TOL);
    }
}

/// The kernels of a convolution other than its tiles and packing that read a stream through a
/// texture where the device reads streams so (`Gpu::dispatch_streaming`).
const TEXTURED_STREAMS: [&str; 7] = [
    "reduce_weight_partials_3x3_strided_textured",
    "reduce_weight_partials_1x1_textured",
    "to_channels_last_rows_textured",
    "to_channels_last_pairs_textured",
    "to_channels_last_rows_gated_textured",
    "to_channels_last_pairs_gated_textured",
    "gradient_channels_last_quads_textured",
];

/// Where the adapter has subgroups, the tiles read their operands as textures, copied there
/// from their buffers: the forward pass and input gradient their input copy and packed weights,
/// the weight gradient x and dy. The packing of a 3x3 weight by quads reads the weight so on
/// every adapter; where the device reads streams through textures, the weight gradient's strided
/// reduction its partial sums, and the channels-last copies their sources ([`TEXTURED_STREAMS`]).
/// (`conv2d_matches_reference` checks the values: its copies span several texture rows and end
/// inside one.)
#[test]
fn subgroup_tiles_read_their_operands_through_textures() {
    let gpu = gpu();
    assert!(gpu.subgroups, "the test adapter has no subgroups of eight lanes: the texture path goes untested");
    // 2048 pixels take the storage tiles (of a size for each pass's channels); 2x2 maps, the
    // lanes kernel.
    for (xs, tile) in [([2, 16, 32, 32], "conv_tile_forward_storage_"), ([2, 16, 2, 2], "conv_tile_forward_lanes_")] {
        let mut g = Graph::new();
        let x = g.input("x", &xs);
        let w = g.param("w", &[24, 16, 3, 3]).unwrap();
        let y = g.conv2d(x, w, None, Conv2dConfig::new(1, 1)).unwrap();
        let mut exe = Executor::new(gpu.clone(), &g, plan(Mode::Train, y)).unwrap();
        let profile = exe.profile().unwrap();
        let tiles: Vec<_> = profile.iter().filter(|d| d.kernel.starts_with(tile)).collect();
        // (A 2x2 map runs each pass as bands.)
        let passes = [Phase::Forward, Phase::Backward].map(|phase| tiles.iter().any(|d| d.phase == phase));
        assert_eq!(passes, [true, true], "{xs:?}: a forward pass and an input gradient by {tile}*: {profile:?}");
        assert!(tiles.iter().all(|d| d.textures == 2), "{xs:?}: {tiles:?}");
        let weight_tiles: Vec<_> = profile.iter().filter(|d| d.kernel.starts_with("conv_tile_weight_")).collect();
        assert!(!weight_tiles.is_empty() && weight_tiles.iter().all(|d| d.textures == 2), "{xs:?}: {weight_tiles:?}");
        // Bands of a pass read the input copy as the band before left it in its texture, and
        // the weight gradient's passes read x as the forward pass left it: the first copies dy
        // alone, the others nothing. (The 2x2 map's forward bands each read weights packed
        // apart.)
        let copies = |d: &&DispatchTime| d.texture_copies;
        let forward: Vec<_> = tiles.iter().filter(|d| d.phase == Phase::Forward).map(copies).collect();
        let weight: Vec<_> = weight_tiles.iter().map(copies).collect();
        match xs[2] {
            2 => assert_eq!(forward, [2, 1, 1, 1], "{xs:?}: {tiles:?}"),
            _ => assert!(tiles.iter().all(|d| d.texture_copies == 2), "{xs:?}: {profile:?}"),
        }
        assert!(weight[0] == 1 && weight[1..].iter().all(|&c| c == 0), "{xs:?}: {weight_tiles:?}");
        let packing: Vec<_> = profile.iter().filter(|d| d.kernel == "pack_weight_forward_quads").collect();
        assert!(!packing.is_empty() && packing.iter().all(|d| d.textures == 1), "{xs:?}: {packing:?}");
        let others: Vec<_> = profile
            .iter()
            .filter(|d| !d.kernel.starts_with(tile) && !d.kernel.starts_with("conv_tile_weight_"))
            .filter(|d| d.kernel != "pack_weight_forward_quads" && d.textures > 0)
            .filter(|d| !(gpu.texture_reads && TEXTURED_STREAMS.contains(&d.kernel)))
            .collect();
        let readers = "the tiles, the packing and (where the device reads streams so) the reduction and copies";
        assert!(others.is_empty(), "{xs:?}: only {readers} read textures: {others:?}");
    }
}

/// The weight-read variants of the conv tiles, which must agree bit for bit.
const WEIGHT_READS: [WeightReads; 5] = [
    WeightReads::UniformBlocks,
    WeightReads::Storage,
    WeightReads::SubgroupStorage,
    WeightReads::WorkgroupTiles,
    WeightReads::SubgroupInputs,
];

/// A device per weight-read variant, each run on a thread of its own. The variants run mostly
/// different kernels, so on a cold shader cache their compiles (minutes of LLVM on lavapipe,
/// done in each device's queue thread) run side by side on the machine's cores rather than
/// one after another in one queue: cold, this test took 680 s on one device, 357 s on five.
fn weight_read_gpus() -> [Arc<kdna::gpu::Gpu>; 5] {
    static GPUS: OnceLock<[Arc<kdna::gpu::Gpu>; 5]> = OnceLock::new();
    GPUS.get_or_init(|| [(); 5].map(|_| Arc::new(kdna::gpu::Gpu::new(None).expect("a device per weight-read variant"))))
        .clone()
}

#[test]
fn conv_weight_paths_agree_bit_for_bit() {
    assert!(gpu().subgroups, "the test adapter has no subgroups of eight lanes: the broadcast path goes untested");
    let cases = [
        ([2, 300, 9, 7], [40, 300, 3, 3], Conv2dConfig::new(2, 1)),
        ([3, 20, 13, 11], [130, 20, 3, 3], Conv2dConfig::new(1, 1)),
        ([2, 136, 6, 5], [72, 136, 3, 3], Conv2dConfig::new(1, 1)),
        // A 2x2 map: every pass runs as bands of outputs that read the same taps, each band with
        // its weights packed apart (17 and 25 quads: a block holds several taps)...
        ([3, 68, 2, 2], [100, 68, 3, 3], Conv2dConfig::new(1, 1)),
        // ... or every band of a pass reading one packing of the pass's taps (33 and 35 quads:
        // a block per tap; 65 and 66: each tap split over two blocks).
        ([2, 132, 2, 2], [140, 132, 3, 3], Conv2dConfig::new(1, 1)),
        ([1, 260, 2, 2], [264, 260, 3, 3], Conv2dConfig::new(1, 1)),
        // Output channels in whole weight tiles: the weight gradient reads dy from the input
        // gradient's padded copy, on odd maps and as bands of a 2x2 map.
        ([2, 20, 9, 7], [64, 20, 3, 3], Conv2dConfig::new(1, 1)),
        ([3, 36, 2, 2], [96, 36, 3, 3], Conv2dConfig::new(1, 1)),
        // And at stride 2, where the input gradient's four phases share one copy of dy.
        ([2, 20, 9, 8], [64, 20, 3, 3], Conv2dConfig::new(2, 1)),
        // Planes of whole pixel quads (48 and 24 pixels), where the storage tiles store each
        // channel's four pixels as one vec4, the input gradient adding to what is there.
        ([2, 24, 8, 6], [64, 24, 3, 3], Conv2dConfig::new(1, 1)),
        ([3, 40, 4, 6], [64, 40, 1, 1], Conv2dConfig::new(1, 0)),
        // 1024 pixels or more take narrow tiles (32 and 16 channels each way), whose weight
        // blocks are denser than the 64 KiB a uniform-block kernel binds of them.
        ([1, 20, 32, 32], [32, 20, 3, 3], Conv2dConfig::new(1, 1)),
        ([1, 8, 32, 33], [12, 8, 3, 3], Conv2dConfig::new(1, 1)),
    ];
    let activations = [
        OutputActivation::Relu,
        OutputActivation::None,
        OutputActivation::Relu6,
        OutputActivation::Relu,
        OutputActivation::None,
        OutputActivation::Relu,
        OutputActivation::Gelu,
        OutputActivation::Relu,
        OutputActivation::Relu6,
        OutputActivation::Gelu,
        OutputActivation::Relu,
        OutputActivation::None,
        OutputActivation::Relu,
    ];
    for (i, (xs, ws, cfg)) in cases.into_iter().enumerate() {
        let shape = Conv2dShape::new(&xs, &ws, cfg).unwrap();
        let (activation, with_residual) = (activations[i], i != 2);
        let mut rng = rng(7 + i as u64);
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let (xv, wv) = (f32_exact(randn(&mut rng, numel(&xs))), f32_exact(randn(&mut rng, numel(&ws))));
        let (bv, dyv) = (f32_exact(randn(&mut rng, ws[0])), f32_exact(randn(&mut rng, numel(&shape.output()))));
        let dx_start = to_f32(&randn(&mut rng, numel(&xs)));
        let rv = f32_exact(randn(&mut rng, numel(&shape.output())));
        let run = |reads: WeightReads, gpu: &kdna::gpu::Gpu| {
            let [x, w, bias, dy] = [&xv, &wv, &bv, &dyv].map(|v| gpu.upload("input", &to_f32(v)));
            let residual = gpu.upload("residual", &to_f32(&rv));
            let plan = GemmPlan::new(&shape).with_weight_reads(reads);
            let scratch: Vec<_> = plan.scratch(true).iter().map(|&n| gpu.storage("scratch", n)).collect();
            let scratch: Vec<_> = scratch.iter().collect();
            let y = gpu.storage("y", numel(&shape.output()));
            let dx = gpu.upload("dx", &dx_start);
            let dw = gpu.storage("dw", numel(&shape.weight()));
            let fusion = Fusion { gate: None, residual: with_residual.then_some(&residual), activation };
            let forward = plan.forward(gpu, [&x, &w, &bias, &y], true, fusion, None, &scratch);
            let mut dispatches: Vec<_> = forward.prepare.into_iter().chain(forward.run).collect();
            let input_gradient = plan.backward_input(gpu, [&dy, &w, &dx], true, None, &scratch);
            if matches!(i, 9 | 10) && matches!(reads, WeightReads::Storage | WeightReads::SubgroupStorage) {
                let quads = |d: &[Dispatch]| d.iter().any(|d| d.label.ends_with("_quads"));
                let passes = [quads(&dispatches), quads(&input_gradient)];
                assert_eq!(passes, [true; 2], "case {i} {reads:?}: the forward pass and input gradient store quads");
            }
            dispatches.extend(input_gradient);
            // The weight gradient with dy as the input gradient copied it (where that copy
            // serves: one dispatch fewer), then with a copy of its own.
            let shared = plan.backward_weight(gpu, [&dy, &dw], false, false, true, &scratch);
            let dw_apart = gpu.storage("dw", numel(&shape.weight()));
            let apart = plan.backward_weight(gpu, [&dy, &dw_apart], false, false, false, &scratch);
            // (The last case's 12 output channels are no whole weight tile.)
            assert_eq!(
                apart.len() - shared.len(),
                usize::from(i >= 6 && i != 12),
                "case {i}: dispatches spared by sharing dy's copy"
            );
            dispatches.extend(shared);
            gpu.run(&dispatches);
            gpu.run(&apart);
            [&y, &dx, &dw, &dw_apart].map(|b| gpu.read::<f32>(b).unwrap())
        };
        let (reads, run, gpus) = (WEIGHT_READS, &run, weight_read_gpus());
        let results = std::thread::scope(|scope| {
            let threads: Vec<_> = reads.iter().zip(&gpus).map(|(&r, gpu)| scope.spawn(move || run(r, gpu))).collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect::<Vec<_>>()
        });
        let differing = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        for (r, result) in reads.iter().zip(&results).skip(1) {
            for (name, (a, b)) in
                ["forward", "input-gradient", "weight-gradient"].iter().zip(results[0].iter().zip(result))
            {
                assert_eq!(differing(a, b), 0, "case {i}: {name} values that differ between {:?} and {r:?}", reads[0]);
            }
        }
        for (r, result) in reads.iter().zip(&results) {
            assert_eq!(differing(&result[2], &result[3]), 0, "case {i}: {r:?} weight gradients from dy's two copies");
        }
        // And they are right.
        let [y, dx, dw, _] = &results[0];
        let (want_dx, want_dw, _) = r::conv2d::backward(&shape, &xv, &wv, &dyv);
        let added: Vec<f64> = dx.iter().zip(&dx_start).map(|(a, b)| (a - b) as f64).collect();
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let want_y: Vec<f64> = (r::conv2d::forward(&shape, &xv, &wv, Some(&bv)).iter().zip(&rv))
            .map(|(&v, &r)| activate(activation, v + if with_residual { r } else { 0.0 }))
            .collect();
        assert_close(&format!("case {i} y"), &wide(y), &want_y, TOL);
        assert_close(&format!("case {i} dx"), &added, &want_dx, TOL);
        assert_close(&format!("case {i} dw"), &wide(dw), &want_dw, TOL);
    }
}

/// The weight-gradient tiles and the lanes tiles run workgroups of `Gpu::tile_lanes`
/// invocations (one vector of a software adapter: 8 lanes at 256 bits, 16 at 512). Each
/// invocation's work is the same whatever that number, so a device with the other number
/// computes the same forward pass, input gradient and weight gradient, bit for bit: over a 2x2
/// map (bands of the lanes tiles) and a 9x7 map (the pixel tiles, weight tiles alone), with
/// channels that leave the last workgroup part-filled at either width.
#[test]
fn tile_workgroups_of_either_width_change_no_value() {
    let shared = gpu();
    assert!(shared.subgroups, "the test adapter has no subgroups of eight lanes: the lanes tiles go untested");
    let mut other = kdna::gpu::Gpu::new(None).expect("a second device on the test adapter");
    other.tile_lanes = if shared.tile_lanes == 8 { 16 } else { 8 };
    let devices = [shared, Arc::new(other)];
    let cases = [
        ([3, 36, 2, 2], [200, 36, 3, 3], Conv2dConfig::new(1, 1), true),
        ([3, 52, 9, 7], [72, 52, 3, 3], Conv2dConfig::new(1, 1), false),
    ];
    for (i, (xs, ws, cfg, lanes)) in cases.into_iter().enumerate() {
        let shape = Conv2dShape::new(&xs, &ws, cfg).unwrap();
        let mut rng = rng(41 + i as u64);
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let (xv, wv) = (f32_exact(randn(&mut rng, numel(&xs))), f32_exact(randn(&mut rng, numel(&ws))));
        let (bv, dyv) = (f32_exact(randn(&mut rng, ws[0])), f32_exact(randn(&mut rng, numel(&shape.output()))));
        let run = |gpu: &kdna::gpu::Gpu| {
            let [x, w, bias, dy] = [&xv, &wv, &bv, &dyv].map(|v| gpu.upload("input", &to_f32(v)));
            let plan = GemmPlan::for_device(&shape, gpu);
            let scratch: Vec<_> = plan.scratch(true).iter().map(|&n| gpu.storage("scratch", n)).collect();
            let scratch: Vec<_> = scratch.iter().collect();
            let [y, dx] = [shape.output(), xs.to_vec()].map(|s| gpu.storage("out", numel(&s)));
            let dw = gpu.storage("dw", numel(&shape.weight()));
            let fusion = Fusion { gate: None, residual: None, activation: OutputActivation::Relu };
            let forward = plan.forward(gpu, [&x, &w, &bias, &y], true, fusion, None, &scratch);
            let mut dispatches: Vec<_> = forward.prepare.into_iter().chain(forward.run).collect();
            dispatches.extend(plan.backward_input(gpu, [&dy, &w, &dx], false, None, &scratch));
            dispatches.extend(plan.backward_weight(gpu, [&dy, &dw], false, false, true, &scratch));
            let ran = |kernel: &str| dispatches.iter().any(|d| d.label.contains(kernel));
            assert_eq!(ran("conv_tile_forward_lanes"), lanes, "case {i}: the lanes tiles run");
            assert!(ran("conv_tile_weight"), "case {i}: the weight-gradient tiles run");
            gpu.run(&dispatches);
            [&y, &dx, &dw].map(|b| gpu.read::<f32>(b).unwrap())
        };
        let [a, b] = devices.each_ref().map(|gpu| run(gpu));
        for (name, (a, b)) in ["forward", "input-gradient", "weight-gradient"].iter().zip(a.iter().zip(&b)) {
            let differing = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differing, 0, "case {i}: {name} values that differ between workgroups of 8 and 16 lanes");
        }
        let (_, want_dw, _) = r::conv2d::backward(&shape, &xv, &wv, &dyv);
        assert_close(&format!("case {i} dw"), &to_f64(&a[2]), &want_dw, TOL);
    }
}

/// What a fused output activation does, in f64.
fn activate(activation: OutputActivation, v: f64) -> f64 {
    match activation {
        OutputActivation::None => v,
        OutputActivation::Relu => v.max(0.0),
        OutputActivation::Relu6 => v.clamp(0.0, 6.0),
        OutputActivation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        OutputActivation::Gelu => r::elementwise::activation_forward(Activation::Gelu, &[v])[0],
    }
}

#[test]
fn modulation_matches_reference() {
    // 3 input channels: 27 weights per output channel, one at a time; 4: 36, four at a time,
    // or (3x3 with a spatial attention) in blocks of 36, one or (8 channels) two per output
    // channel, each channel's blocks summed by one invocation (two children to a pass), or
    // (516 channels, 129 blocks) by a workgroup. 3x3 kernels with a spatial attention take the
    // fused attention gradient, 1x3 the general. Children 1 and 2 of 3 attention rows (row 0
    // left to another parent), or all three, the parent also read directly: a pair of children,
    // then one, adding to the parent's gradient. Without a spatial attention, an output
    // channel's weights in fours (36, 300) have their filter gradient summed by one invocation,
    // 27 or more than 4096 (4104) by a workgroup.
    let cases = [
        (true, 3, 3, false),
        (false, 3, 3, false),
        (true, 4, 3, false),
        (true, 8, 3, false),
        (true, 8, 3, true),
        (true, 516, 3, false),
        (false, 4, 3, false),
        (false, 100, 1, true),
        (false, 1368, 1, false),
        (true, 4, 1, false),
        (true, 3, 1, false),
    ];
    for (has_spatial, c_in, kh, all_rows) in cases {
        let (first_child, children) = if all_rows { (0, 3) } else { (1, 2) };
        let mut g = Graph::new();
        let parent = g.param("parent", &[5, c_in, kh, 3]).unwrap();
        let spatial = g.param("spatial", &[3, 1, 1, kh, 3]).unwrap();
        let filter = g.param("filter", &[3, 5, 1, 1, 1]).unwrap();
        let kids = g.modulate(parent, has_spatial.then_some(spatial), filter, first_child, children).unwrap();
        // Sum the children (and the parent, where it is read directly) into one root, so
        // backward starts from one tensor.
        let mut root = g.add(kids[0], kids[1]).unwrap();
        for &t in kids[2..].iter().chain(all_rows.then_some(&parent)) {
            root = g.add(root, t).unwrap();
        }
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, root)).unwrap();
        let mut rng = rng(200);
        let pv = feed(&exe, &g, parent, &mut rng);
        let sv = feed(&exe, &g, spatial, &mut rng);
        let fv = feed(&exe, &g, filter, &mut rng);
        let dy = seed_grad(&exe, &g, root, &mut rng);
        exe.run().unwrap();
        let m = Modulate {
            first_child,
            children,
            rows: 3,
            c_out: 5,
            fan: 3 * kh * c_in,
            taps: 3 * kh,
            has_spatial,
            live_taps: None,
            packed_by_consumer: 0,
            dchild_strides: None,
            own_parent_gradient: false,
        };
        let sp = has_spatial.then_some(sv.as_slice());
        let want = r::modulate::forward(&m, &pv, sp, &fv);
        for (c, kid) in kids.iter().enumerate() {
            assert_close(&format!("child {}", first_child + c), &read(&exe, *kid), &want[c], TOL);
        }
        let (mut dp, ds, df) = r::modulate::backward(&m, &pv, sp, &fv, &vec![dy.clone(); children]);
        if all_rows {
            dp.iter_mut().zip(&dy).for_each(|(p, d)| *p += d);
        }
        assert_close("dparent", &read_grad(&exe, parent), &dp, TOL);
        assert_close("dfilter (a row no child uses stays zero)", &read_grad(&exe, filter), &df, TOL);
        if has_spatial {
            assert_close("dspatial", &read_grad(&exe, spatial), &ds, TOL);
        }
    }
}

/// The filter gradient of children without a spatial attention, one invocation per output
/// channel, reads the parent and dchild through textures where the device reads streams so,
/// and from storage where not: the same bits both ways, written and (a second pair of
/// children of the same attention rows) added to. (modulation_matches_reference checks the
/// values.)
#[test]
fn serial_filter_gradient_reading_textures_changes_no_value() {
    both_ways_agree(&["dfilter", "dparent"], |device| {
        let reads_textures = device.texture_reads;
        let mut g = Graph::new();
        let parents = [g.param("parent0", &[7, 24, 1, 1]).unwrap(), g.param("parent1", &[7, 24, 1, 1]).unwrap()];
        let filter = g.param("filter", &[2, 7, 1, 1, 1]).unwrap();
        let mut kids = Vec::new();
        for parent in parents {
            kids.extend(g.modulate(parent, None, filter, 0, 2).unwrap());
        }
        let mut root = g.add(kids[0], kids[1]).unwrap();
        for &kid in &kids[2..] {
            root = g.add(root, kid).unwrap();
        }
        let mut exe = Executor::new(device, &g, plan(Mode::Train, root)).unwrap();
        let mut rng = rng(460);
        for t in [parents[0], parents[1], filter] {
            feed(&exe, &g, t, &mut rng);
        }
        seed_grad(&exe, &g, root, &mut rng);
        exe.run().unwrap();
        let profile = exe.profile().unwrap();
        let filters: Vec<_> = profile.iter().filter(|d| d.kernel.starts_with("modulate_backward_filter")).collect();
        let expected = match reads_textures {
            true => ("modulate_backward_filter_serial_textured", 2),
            false => ("modulate_backward_filter_serial", 0),
        };
        assert_eq!(filters.len(), 4, "a filter gradient per child: {profile:?}");
        assert!(filters.iter().all(|d| (d.kernel, d.textures) == expected), "{filters:?}");
        vec![read_grad(&exe, filter), read_grad(&exe, parents[0])]
    });
}

#[test]
fn modulation_computes_only_the_taps_its_convs_read() {
    // Child 0 feeds a conv on 1x1 maps (the centre tap), child 1 a conv on 2x1 maps (the
    // centre column): the node computes taps 1, 4 and 7, and the gradients still match.
    let (c_out, c_in) = (6, 5);
    let mut g = Graph::new();
    let parent = g.param("parent", &[c_out, c_in, 3, 3]).unwrap();
    let spatial = g.param("spatial", &[2, 1, 1, 3, 3]).unwrap();
    let filter = g.param("filter", &[2, c_out, 1, 1, 1]).unwrap();
    let kids = g.modulate(parent, Some(spatial), filter, 0, 2).unwrap();
    let (xs0, xs1) = ([3, c_in, 1, 1], [2, c_in, 2, 1]);
    let x0 = g.input("x0", &xs0);
    let x1 = g.input("x1", &xs1);
    let y0 = g.conv2d(x0, kids[0], None, Conv2dConfig::new(1, 1)).unwrap();
    let y1 = g.conv2d(x1, kids[1], None, Conv2dConfig::new(1, 1)).unwrap();
    let node = g.nodes.iter().find_map(|n| n.op.as_any().downcast_ref::<Modulate>()).unwrap();
    assert_eq!(node.live_taps, Some(1 << 1 | 1 << 4 | 1 << 7), "the node should compute the centre column");
    let m = *node;

    let mut exe = Executor::new(gpu(), &g, gradient_plan(Mode::Train, vec![y0, y1], false)).unwrap();
    let mut rng = rng(250);
    let pv = feed(&exe, &g, parent, &mut rng);
    let sv = feed(&exe, &g, spatial, &mut rng);
    let fv = feed(&exe, &g, filter, &mut rng);
    let (x0v, x1v) = (feed(&exe, &g, x0, &mut rng), feed(&exe, &g, x1, &mut rng));
    let (dy0, dy1) = (seed_grad(&exe, &g, y0, &mut rng), seed_grad(&exe, &g, y1, &mut rng));
    // Stale values where the parent's gradient has unread taps must be overwritten with zeros.
    exe.write_grad(parent, &vec![7.0; c_out * c_in * 9]).unwrap();
    exe.run().unwrap();

    let children = r::modulate::forward(&m, &pv, Some(&sv), &fv);
    let shape = |xs: &[usize]| Conv2dShape::new(xs, &[c_out, c_in, 3, 3], Conv2dConfig::new(1, 1)).unwrap();
    let (s0, s1) = (shape(&xs0), shape(&xs1));
    assert_close("y0", &read(&exe, y0), &r::conv2d::forward(&s0, &x0v, &children[0], None), TOL);
    assert_close("y1", &read(&exe, y1), &r::conv2d::forward(&s1, &x1v, &children[1], None), TOL);
    let (_, dchild0, _) = r::conv2d::backward(&s0, &x0v, &children[0], &dy0);
    let (_, dchild1, _) = r::conv2d::backward(&s1, &x1v, &children[1], &dy1);
    let (dp, ds, df) = r::modulate::backward(&m, &pv, Some(&sv), &fv, &[dchild0, dchild1]);
    assert_close("dparent", &read_grad(&exe, parent), &dp, TOL);
    assert_close("dspatial", &read_grad(&exe, spatial), &ds, TOL);
    assert_close("dfilter", &read_grad(&exe, filter), &df, TOL);
}

#[test]
fn packings_of_one_parent_copy_it_into_a_texture_once() {
    // Two children of a parent and the parent itself, each a 3x3 conv over inputs in fours:
    // packings from the parent, one after another in the prepare phase. The first child's conv
    // runs on maps of another size, so it packs the child itself; where tiles read through
    // subgroups, the second child's runs over the parent's packings (its conv's shape is the
    // parent conv's), elsewhere it packs its own. On a device that reads them through textures,
    // the first packing copies the parent and the others read its copy; the outputs are the
    // reference's either way.
    let (c_out, c_in) = (8, 8);
    let (xs0, xs1) = ([2, c_in, 6, 5], [2, c_in, 7, 7]);
    let mut g = Graph::new();
    let parent = g.param("parent", &[c_out, c_in, 3, 3]).unwrap();
    let spatial = g.param("spatial", &[2, 1, 1, 3, 3]).unwrap();
    let filter = g.param("filter", &[2, c_out, 1, 1, 1]).unwrap();
    let kids = g.modulate(parent, Some(spatial), filter, 0, 2).unwrap();
    let (x0, x1) = (g.input("x0", &xs0), g.input("x1", &xs1));
    let ys = [(x0, kids[0]), (x1, kids[1]), (x1, parent)]
        .map(|(x, w)| g.conv2d(x, w, None, Conv2dConfig::new(1, 1)).unwrap());
    let m = *g.nodes.iter().find_map(|n| n.op.as_any().downcast_ref::<Modulate>()).unwrap();

    let mut exe = Executor::new(gpu(), &g, gradient_plan(Mode::Train, ys.to_vec(), false)).unwrap();
    let mut rng = rng(270);
    let pv = feed(&exe, &g, parent, &mut rng);
    let sv = feed(&exe, &g, spatial, &mut rng);
    let fv = feed(&exe, &g, filter, &mut rng);
    let x0v = feed(&exe, &g, x0, &mut rng);
    let x1v = feed(&exe, &g, x1, &mut rng);
    for y in ys {
        seed_grad(&exe, &g, y, &mut rng);
    }
    // The profile's run is the first: it prepares the packings, which the run after it keeps.
    let profile = exe.profile().unwrap();
    exe.run().unwrap();
    let packings: Vec<&DispatchTime> = profile.iter().filter(|d| d.phase == Phase::Prepare).collect();
    assert!(packings.iter().all(|d| d.kernel == "pack_weight_forward_quads"), "{packings:?}");
    let copies: Vec<(usize, usize)> = packings.iter().map(|d| (d.textures, d.texture_copies)).collect();
    let expected = match (gpu().texture_reads, gpu().subgroups) {
        (true, true) => vec![(1, 1), (1, 0)],
        (true, false) => vec![(1, 1), (1, 0), (1, 0)],
        (false, shared) => vec![(0, 0); if shared { 2 } else { 3 }],
    };
    assert_eq!(copies, expected, "(textures, copies) of each packing: {packings:?}");

    let children = r::modulate::forward(&m, &pv, Some(&sv), &fv);
    let shape = |xs: &[usize]| Conv2dShape::new(xs, &[c_out, c_in, 3, 3], Conv2dConfig::new(1, 1)).unwrap();
    let cases = [(&xs0, &x0v, &children[0]), (&xs1, &x1v, &children[1]), (&xs1, &x1v, &pv)];
    for (i, (xs, xv, w)) in cases.into_iter().enumerate() {
        let want = r::conv2d::forward(&shape(xs), xv, w, None);
        assert_close(&format!("y{i}"), &read(&exe, ys[i]), &want, TOL);
    }
}

/// Where tiles read through subgroups, a KernelDNA child's convolution of the parent's own
/// conv's shape runs over the parent's packings, which that conv packs: the children are never
/// packed, and their tiles (`_child`, `_child_dx`) multiply each weight as they load it. Outputs
/// and gradients are those of children packed on their own (`fuse: false`: the modulation
/// stores them) bit for bit, for the lanes kernel (few pixels) and storage tiles of 64, 32 and
/// 16 channels (1024 pixels or more take the narrow ones).
#[test]
fn children_over_their_parents_packing_change_no_bit() {
    assert!(gpu().subgroups, "the test adapter has no subgroups of eight lanes: the child tiles go untested");
    let cases = [
        ([2, 32, 5, 5], 32, "lanes"),
        ([2, 32, 12, 12], 32, "64x8"),
        ([1, 20, 32, 32], 32, "32x16"),
        ([1, 16, 32, 33], 12, "16x32"),
    ];
    for (xs, c_out, tile) in cases {
        let c_in = xs[1];
        let mut g = Graph::new();
        let parent = g.param("parent", &[c_out, c_in, 3, 3]).unwrap();
        let spatial = g.param("spatial", &[2, 1, 1, 3, 3]).unwrap();
        let filter = g.param("filter", &[2, c_out, 1, 1, 1]).unwrap();
        let kids = g.modulate(parent, Some(spatial), filter, 0, 2).unwrap();
        let x = g.input("x", &xs);
        let ys = [kids[0], kids[1], parent].map(|w| g.conv2d(x, w, None, Conv2dConfig::new(1, 1)).unwrap());
        let run = |fuse: bool| {
            let plan = Plan { fuse, ..gradient_plan(Mode::Train, ys.to_vec(), true) };
            let mut exe = Executor::new(gpu(), &g, plan).unwrap();
            let mut rng = rng(271);
            for t in [parent, spatial, filter, x] {
                feed(&exe, &g, t, &mut rng);
            }
            for y in ys {
                seed_grad(&exe, &g, y, &mut rng);
            }
            let profile = exe.profile().unwrap();
            exe.run().unwrap();
            let bits = |v: Vec<f64>| v.iter().map(|v| (*v as f32).to_bits()).collect::<Vec<_>>();
            let grads = [x, parent, spatial, filter].map(|t| bits(read_grad(&exe, t)));
            (profile, ys.map(|y| bits(read(&exe, y))), grads)
        };
        let (shared, apart) = (run(true), run(false));
        let packings = |p: &[DispatchTime]| p.iter().filter(|d| d.kernel.starts_with("pack_weight")).count();
        assert_eq!((packings(&shared.0), packings(&apart.0)), (1, 3), "{xs:?}: packings (the parent's alone)");
        let child_tiles: Vec<_> =
            shared.0.iter().filter(|d| d.kernel.ends_with("_child") || d.kernel.ends_with("_child_dx")).collect();
        let passes =
            ["_child", "_child_dx"].map(|pass| child_tiles.iter().filter(|d| d.kernel.ends_with(pass)).count());
        assert!(
            passes.iter().all(|&n| n >= 2),
            "{xs:?}: both children's forward passes and input gradients: {child_tiles:?}"
        );
        assert!(child_tiles.iter().all(|d| d.kernel.contains(tile)), "{xs:?}: {tile} tiles: {child_tiles:?}");
        for (i, (a, b)) in shared.1.iter().zip(&apart.1).enumerate() {
            assert_eq!(a, b, "{xs:?}: y{i} differs");
        }
        for (name, (a, b)) in ["dx", "dparent", "dspatial", "dfilter"].iter().zip(shared.2.iter().zip(&apart.2)) {
            assert_eq!(a, b, "{xs:?}: {name} differs");
        }
    }
}

/// A BatchNorm's inputs for input `shape`: x, weight, bias, running mean (zeros) and running
/// variance (ones).
fn batchnorm_inputs(g: &mut Graph, shape: &[usize]) -> [TensorId; 5] {
    let c = shape[1];
    let x = g.input("x", shape);
    let w = g.param("weight", &[c]).unwrap();
    let b = g.param("bias", &[c]).unwrap();
    let rm = g.state("running_mean", &[c], Init::Zeros).unwrap();
    let rv = g.state("running_var", &[c], Init::Ones).unwrap();
    [x, w, b, rm, rv]
}

/// The BatchNorm (torch's defaults, no activation) a reference computes for input `shape`.
fn batchnorm_op(shape: &[usize]) -> BatchNorm {
    let spatial = shape[2..].iter().product();
    BatchNorm {
        batch: shape[0],
        channels: shape[1],
        spatial,
        eps: 1e-5,
        momentum: 0.1,
        activation: OutputActivation::None,
    }
}

#[test]
fn batchnorm_matches_reference_in_both_modes() {
    // Planes of 63, 15, 90 (more than a workgroup's 64 lanes) and 1 elements, whose channels
    // the train-mode reductions sum one per invocation; 1,500 elements per channel, one
    // workgroup each; then 68,400, which they split into two chunks. Planes of 12 and 4
    // elements (and the last) run the elementwise kernels on vec4s: one run of three and of
    // one, and the serial reductions over vec4s. Planes of 480 and 32 elements, 1,440 and
    // 1,280 to a channel, run the workgroup reductions over vec4s, whose lanes step over eight
    // planes at a time in the second, and the elementwise kernels in runs of eight vec4s.
    let shapes = [
        vec![3, 5, 7, 9],
        vec![1, 13, 5, 3],
        vec![2, 3, 9, 10],
        vec![6, 7],
        vec![2, 4, 30, 25],
        vec![2, 3, 190, 180],
        vec![3, 6, 4, 3],
        vec![5, 3, 2, 2],
        vec![3, 2, 20, 24],
        vec![40, 2, 4, 8],
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        for mode in [Mode::Train, Mode::Eval] {
            let c = shape[1];
            let mut g = Graph::new();
            let [x, w, b, rm, rv] = batchnorm_inputs(&mut g, &shape);
            let y = g.batchnorm(x, w, b, rm, rv, 1e-5, 0.1).unwrap();
            let mut exe = Executor::new(gpu(), &g, plan(mode, y)).unwrap();
            let mut rng = rng(300 + i as u64);
            let xv: Vec<f64> = feed(&exe, &g, x, &mut rng).iter().map(|v| 3.0 + 2.0 * v).collect();
            exe.write(x, &to_f32(&xv)).unwrap();
            let (wv, bv, rmv) =
                (feed(&exe, &g, w, &mut rng), feed(&exe, &g, b, &mut rng), feed(&exe, &g, rm, &mut rng));
            let rvv = f32_exact(randn(&mut rng, c).iter().map(|v| 0.5 + v.abs()).collect());
            exe.write(rv, &to_f32(&rvv)).unwrap();
            let dy = seed_grad(&exe, &g, y, &mut rng);
            exe.run().unwrap();
            let op = batchnorm_op(&shape);
            let case = format!("{shape:?} {mode:?}");
            let (want, running) = match mode {
                Mode::Train => {
                    let (y, m, v) = r::batchnorm::forward_train(&op, &xv, &wv, &bv, &rmv, &rvv);
                    (y, (m, v))
                }
                Mode::Eval => (r::batchnorm::forward_eval(&op, &xv, &wv, &bv, &rmv, &rvv), (rmv.clone(), rvv.clone())),
            };
            assert_close(&format!("{case} y"), &read(&exe, y), &want, TOL);
            assert_close(&format!("{case} running mean"), &read(&exe, rm), &running.0, TOL);
            assert_close(&format!("{case} running var"), &read(&exe, rv), &running.1, TOL);
            let stats = (mode == Mode::Eval).then_some((rmv.as_slice(), rvv.as_slice()));
            let (dx, dw, db) = r::batchnorm::backward(&op, &xv, &wv, &dy, stats);
            assert_close(&format!("{case} dx"), &read_grad(&exe, x), &dx, TOL);
            assert_close(&format!("{case} dweight"), &read_grad(&exe, w), &dw, TOL);
            assert_close(&format!("{case} dbias"), &read_grad(&exe, b), &db, TOL);
        }
    }
}

/// Channels whose mean lies a million times their spread from zero: the one-pass statistics
/// (sums of x - shift and its square, the shift a sample of the channel) keep the variance to
/// f32 precision, through the serial, workgroup and chunked reductions. Without the shift the
/// squares' sum would cancel all but a few bits of it.
#[test]
fn batchnorm_statistics_of_channels_far_from_zero() {
    for (i, shape) in [vec![4, 3, 6, 5], vec![2, 2, 40, 40], vec![2, 3, 190, 180]].into_iter().enumerate() {
        let c = shape[1];
        let mut g = Graph::new();
        let [x, w, b, rm, rv] = batchnorm_inputs(&mut g, &shape);
        let y = g.batchnorm(x, w, b, rm, rv, 1e-5, 0.1).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(330 + i as u64);
        let plane: usize = shape[2..].iter().product();
        let xv: Vec<f64> = feed(&exe, &g, x, &mut rng)
            .iter()
            .enumerate()
            .map(|(k, v)| (1e6 * (1 + k / plane % c) as f64 + v) as f32 as f64)
            .collect();
        exe.write(x, &to_f32(&xv)).unwrap();
        let (wv, bv) = (feed(&exe, &g, w, &mut rng), feed(&exe, &g, b, &mut rng));
        let (rmv, rvv) = (vec![0.0; c], vec![1.0; c]);
        exe.write(rm, &to_f32(&rmv)).unwrap();
        exe.write(rv, &to_f32(&rvv)).unwrap();
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let op = batchnorm_op(&shape);
        let (want, _, running_var) = r::batchnorm::forward_train(&op, &xv, &wv, &bv, &rmv, &rvv);
        let case = format!("{shape:?}");
        assert_close(&format!("{case} y"), &read(&exe, y), &want, TOL);
        assert_close(&format!("{case} running var"), &read(&exe, rv), &running_var, TOL);
        let (dx, _, _) = r::batchnorm::backward(&op, &xv, &wv, &dy, None);
        assert_close(&format!("{case} dx"), &read_grad(&exe, x), &dx, TOL);
    }
}

/// A relu or relu6 applied by the BatchNorm gives what the BatchNorm and the activation op give
/// one after the other, bit for bit, in both modes and through every reduction kernel: serial
/// and workgroup, scalar and vec4, and split into chunks.
#[test]
fn batchnorm_activated_matches_batchnorm_then_activation_bit_for_bit() {
    let shapes = [vec![3, 5, 7, 9], vec![2, 4, 30, 25], vec![2, 3, 190, 180], vec![3, 6, 4, 3], vec![3, 2, 20, 24]];
    for (i, shape) in shapes.into_iter().enumerate() {
        for (mode, activation) in [Mode::Train, Mode::Eval]
            .into_iter()
            .flat_map(|m| [(m, OutputActivation::Relu), (m, OutputActivation::Relu6)])
        {
            let run = |fused: bool| {
                let mut g = Graph::new();
                let [x, w, b, rm, rv] = batchnorm_inputs(&mut g, &shape);
                let y = match fused {
                    true => g.batchnorm_activated(x, [w, b, rm, rv], 1e-5, 0.1, activation).unwrap(),
                    false => {
                        let z = g.batchnorm(x, w, b, rm, rv, 1e-5, 0.1).unwrap();
                        let kind =
                            if activation == OutputActivation::Relu { Activation::Relu } else { Activation::Relu6 };
                        g.activation(z, kind)
                    }
                };
                let mut exe = Executor::new(gpu(), &g, plan(mode, y)).unwrap();
                let mut rng = rng(320 + i as u64);
                feed(&exe, &g, x, &mut rng);
                // Weights of a few units, so that relu6 clips at both ends.
                let wv: Vec<f64> = feed(&exe, &g, w, &mut rng).iter().map(|v| 4.0 * v).collect();
                exe.write(w, &to_f32(&wv)).unwrap();
                feed(&exe, &g, b, &mut rng);
                feed(&exe, &g, rm, &mut rng);
                seed_grad(&exe, &g, y, &mut rng);
                exe.run().unwrap();
                let grads = [x, w, b].map(|t| read_grad(&exe, t));
                (read(&exe, y), read(&exe, rm), read(&exe, rv), grads)
            };
            let (y, rm, rv, grads) = run(true);
            let want = run(false);
            let case = format!("{shape:?} {mode:?} {activation:?}");
            assert_eq!(y, want.0, "{case}: y");
            assert_eq!((rm, rv), (want.1, want.2), "{case}: running statistics");
            for ((got, want), name) in grads.iter().zip(&want.3).zip(["dx", "dweight", "dbias"]) {
                assert_eq!(got, want, "{case}: {name}");
            }
            assert!(y.contains(&0.0), "{case}: nothing below the kink");
            if activation == OutputActivation::Relu6 {
                assert!(y.contains(&6.0), "{case}: nothing above 6");
            }
        }
    }
}

/// Two BatchNorms of one input sharing their parameters: every gradient is the sum of both
/// (planes of 15 elements, scalar kernels; of 12, vec4 kernels).
#[test]
fn batchnorm_gradients_add_up_when_used_twice() {
    for shape in [vec![2, 3, 5, 3], vec![3, 6, 4, 3]] {
        let c = shape[1];
        let mut g = Graph::new();
        let x = g.input("x", &shape);
        let w = g.param("weight", &[c]).unwrap();
        let b = g.param("bias", &[c]).unwrap();
        let mut outputs = Vec::new();
        for k in 0..2 {
            let rm = g.state(&format!("running_mean{k}"), &[c], Init::Zeros).unwrap();
            let rv = g.state(&format!("running_var{k}"), &[c], Init::Ones).unwrap();
            outputs.push(g.batchnorm(x, w, b, rm, rv, 1e-5, 0.1).unwrap());
        }
        let y = g.add(outputs[0], outputs[1]).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(320);
        let (xv, wv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, w, &mut rng));
        feed(&exe, &g, b, &mut rng);
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let op = batchnorm_op(&shape);
        let twice = |v: Vec<f64>| v.into_iter().map(|v| 2.0 * v).collect::<Vec<_>>();
        let (dx, dw, db) = r::batchnorm::backward(&op, &xv, &wv, &dy, None);
        let case = format!("{shape:?}");
        assert_close(&format!("{case} dx"), &read_grad(&exe, x), &twice(dx), TOL);
        assert_close(&format!("{case} dweight"), &read_grad(&exe, w), &twice(dw), TOL);
        assert_close(&format!("{case} dbias"), &read_grad(&exe, b), &twice(db), TOL);
    }
}

#[test]
fn layernorm_matches_reference() {
    // 7 channels at 15 positions; 70 channels at one position ([N, C]: a parameter reduction
    // over 2 values with 62 idle lanes); 3 channels at 143 positions (over 64 lanes, 3 workgroups
    // of forward invocations).
    for (i, shape) in [vec![3, 7, 5, 3], vec![2, 70], vec![1, 3, 11, 13]].into_iter().enumerate() {
        let c = shape[1];
        let mut g = Graph::new();
        let x = g.input("x", &shape);
        let w = g.param("weight", &[c]).unwrap();
        let b = g.param("bias", &[c]).unwrap();
        let y = g.layernorm(x, w, b, 1e-6).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(330 + i as u64);
        // An offset and scale per position, as activations have.
        let xv: Vec<f64> = f32_exact(feed(&exe, &g, x, &mut rng).iter().map(|v| 2.0 + 3.0 * v).collect());
        exe.write(x, &to_f32(&xv)).unwrap();
        let (wv, bv) = (feed(&exe, &g, w, &mut rng), feed(&exe, &g, b, &mut rng));
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let op = LayerNorm { batch: shape[0], channels: c, spatial: shape[2..].iter().product(), eps: 1e-6 };
        let case = format!("{shape:?}");
        assert_close(&format!("{case} y"), &read(&exe, y), &r::layernorm::forward(&op, &xv, &wv, &bv), TOL);
        let (dx, dw, db) = r::layernorm::backward(&op, &xv, &wv, &dy);
        assert_close(&format!("{case} dx"), &read_grad(&exe, x), &dx, TOL);
        assert_close(&format!("{case} dweight"), &read_grad(&exe, w), &dw, TOL);
        assert_close(&format!("{case} dbias"), &read_grad(&exe, b), &db, TOL);
    }
}

#[test]
fn layer_scale_matches_reference() {
    // Gamma as torchvision shapes it ([C, 1, 1]); 195 positions per channel (over the 64 lanes
    // of the gamma reduction) and one position.
    for (i, shape) in [vec![2, 5, 13, 15], vec![3, 70]].into_iter().enumerate() {
        let c = shape[1];
        let mut g = Graph::new();
        let x = g.input("x", &shape);
        let gamma = g.param("layer_scale", &[c, 1, 1]).unwrap();
        let y = g.layer_scale(x, gamma).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(360 + i as u64);
        let (xv, gv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, gamma, &mut rng));
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let spatial = shape[2..].iter().product();
        let case = format!("{shape:?}");
        let want = r::elementwise::layer_scale_forward(&xv, &gv, spatial);
        assert_close(&format!("{case} y"), &read(&exe, y), &want, TOL);
        let (dx, dgamma) = r::elementwise::layer_scale_backward(&xv, &gv, &dy, spatial);
        assert_close(&format!("{case} dx"), &read_grad(&exe, x), &dx, TOL);
        assert_close(&format!("{case} dgamma"), &read_grad(&exe, gamma), &dgamma, TOL);
    }
}

#[test]
fn drop_path_matches_reference_in_both_modes() {
    let shape = [4, 3, 5, 7];
    for mode in [Mode::Train, Mode::Eval] {
        let mut g = Graph::new();
        let x = g.input("x", &shape);
        let y = g.drop_path(x, "mask", 0.3);
        let mask_id = g.find("mask").unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(mode, y)).unwrap();
        let mut rng = rng(370);
        let xv = feed(&exe, &g, x, &mut rng);
        let mask = [1.0, 0.0, 0.0, 1.0];
        exe.write(mask_id, &mask.map(|m| m as f32)).unwrap();
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let train = mode == Mode::Train;
        let case = format!("{mode:?}");
        assert_close(&format!("{case} y"), &read(&exe, y), &r::elementwise::drop_path(&xv, &mask, 0.3, train), TOL);
        assert_close(
            &format!("{case} dx"),
            &read_grad(&exe, x),
            &r::elementwise::drop_path(&dy, &mask, 0.3, train),
            TOL,
        );
    }
    // Probability 0 adds nothing to the graph.
    let mut g = Graph::new();
    let x = g.input("x", &shape);
    assert_eq!(g.drop_path(x, "mask", 0.0), x);
    assert!(g.nodes.is_empty());
}

#[test]
fn activations_match_reference() {
    // 1155 elements (scalar kernels) and 420 (four per invocation).
    let shapes = [[3, 7, 11, 5], [2, 6, 5, 7]];
    for (kind, shape) in [Activation::Relu, Activation::Relu6, Activation::Sigmoid, Activation::Gelu]
        .into_iter()
        .flat_map(|k| shapes.map(|s| (k, s)))
    {
        let mut g = Graph::new();
        let x = g.input("x", &shape);
        let y = g.activation(x, kind);
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(400);
        let xv: Vec<f64> = f32_exact(randn(&mut rng, shape.iter().product()).iter().map(|v| 5.0 * v).collect());
        exe.write(x, &to_f32(&xv)).unwrap();
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        assert_close(&format!("{kind:?} y"), &read(&exe, y), &r::elementwise::activation_forward(kind, &xv), TOL);
        let dx = r::elementwise::activation_backward(kind, &xv, &dy);
        assert_close(&format!("{kind:?} dx"), &read_grad(&exe, x), &dx, TOL);
    }
}

/// GELU's four-wide kernels store the bits of the scalar ones: the same x through both (420
/// elements in fours, 421 not), each used twice so that the second gradient adds to the first.
#[test]
fn gelu_kernels_agree_bit_for_bit() {
    let mut rng = rng(410);
    let xv: Vec<f32> = randn(&mut rng, 421).iter().map(|v| 5.0 * *v as f32).collect();
    let dyv: Vec<f32> = randn(&mut rng, 421).iter().map(|v| *v as f32).collect();
    let run = |len: usize| {
        let mut g = Graph::new();
        let x = g.input("x", &[len]);
        let (a, b) = (g.gelu(x), g.gelu(x));
        let y = g.add(a, b).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        exe.write(x, &xv[..len]).unwrap();
        exe.write_grad(y, &dyv[..len]).unwrap();
        exe.run().unwrap();
        let values = (exe.read(a).unwrap(), exe.read_grad(x).unwrap());
        let kernels = exe.profile().unwrap().into_iter().map(|d| d.kernel).filter(|k| k.starts_with("gelu"));
        (values.0, values.1, kernels.collect::<Vec<_>>())
    };
    let (quads, scalar) = (run(420), run(421));
    assert!(quads.2.iter().all(|l| l.ends_with("_quads")) && quads.2.len() == 4, "four-wide kernels: {:?}", quads.2);
    let differing = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differing(&quads.0, &scalar.0[..420]), 0, "GELU values that differ between the kernels");
    assert_eq!(differing(&quads.1, &scalar.1[..420]), 0, "GELU gradients that differ between the kernels");
}

#[test]
fn residual_add_sends_the_gradient_to_both_inputs() {
    // 45 elements (scalar kernels) and 120 (four per invocation).
    for shape in [[3, 5, 3], [2, 4, 15]] {
        let mut g = Graph::new();
        let a = g.input("a", &shape);
        let b = g.input("b", &shape);
        let y = g.add(a, b).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(450);
        let (av, bv) = (feed(&exe, &g, a, &mut rng), feed(&exe, &g, b, &mut rng));
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let sum: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| x + y).collect();
        assert_close("a + b", &read(&exe, y), &sum, TOL);
        assert_close("da", &read_grad(&exe, a), &dy, 0.0);
        assert_close("db", &read_grad(&exe, b), &dy, 0.0);
    }
}

#[test]
fn add_relu_matches_add_then_relu_bit_for_bit() {
    // 45 elements (scalar kernels) and 120 (four per invocation). The operands: both wanting a
    // gradient; one or the other also read by a later relu (so the fused gradient adds to its
    // gradient there and overwrites the other's); and b a state (no gradient: one target).
    for shape in [[3, 5, 3], [2, 4, 15]] {
        for (shared_a, shared_b, b_is_state) in
            [(false, false, false), (true, false, false), (false, true, false), (true, true, true)]
        {
            let run = |fused: bool| {
                let mut g = Graph::new();
                let a = g.input("a", &shape);
                let b = if b_is_state { g.state("b", &shape, Init::Zeros).unwrap() } else { g.input("b", &shape) };
                let mut root = match fused {
                    true => g.add_relu(a, b).unwrap(),
                    false => {
                        let sum = g.add(a, b).unwrap();
                        g.relu(sum)
                    }
                };
                for (operand, shared) in [(a, shared_a), (b, shared_b)] {
                    if shared {
                        let r = g.relu(operand);
                        root = g.add(root, r).unwrap();
                    }
                }
                let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, root)).unwrap();
                let mut rng = rng(455);
                let (av, bv) = (feed(&exe, &g, a, &mut rng), feed(&exe, &g, b, &mut rng));
                seed_grad(&exe, &g, root, &mut rng);
                exe.run().unwrap();
                let db = (!b_is_state).then(|| read_grad(&exe, b));
                (av, bv, read(&exe, root), read_grad(&exe, a), db)
            };
            let (av, bv, y, da, db) = run(true);
            let (_, _, want_y, want_da, want_db) = run(false);
            let case = format!("{shape:?} a read again {shared_a}, b {shared_b}, b a state {b_is_state}");
            assert_eq!(y, want_y, "{case}: y");
            assert_eq!(da, want_da, "{case}: da");
            assert_eq!(db, want_db, "{case}: db");
            if !shared_a && !shared_b {
                let relu: Vec<f64> = av.iter().zip(&bv).map(|(a, b)| (a + b).max(0.0)).collect();
                assert_close(&format!("{case}: relu(a + b)"), &y, &relu, TOL);
                assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0), "{case}: both sides of the kink");
            }
        }
    }
}

#[test]
fn gradients_of_a_tensor_used_twice_add_up() {
    // x feeds both operands of an add and a relu: the second and third contributions add.
    for shape in [[3, 5, 3], [2, 4, 15]] {
        let mut g = Graph::new();
        let x = g.input("x", &shape);
        let doubled = g.add(x, x).unwrap();
        let rectified = g.relu(x);
        let y = g.add(doubled, rectified).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(460);
        let xv = feed(&exe, &g, x, &mut rng);
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let want: Vec<f64> = xv.iter().zip(&dy).map(|(x, d)| 2.0 * d + if *x > 0.0 { *d } else { 0.0 }).collect();
        assert_close("dx", &read_grad(&exe, x), &want, TOL);
    }
}

#[test]
fn pooling_matches_reference() {
    let mut rng = rng(500);
    // ResNet's stem pool, on rows of odd width and (four windows at a time,
    // `maxpool_forward_3x3s2_quads`) of widths in eights; windows that overlap by two pixels
    // (stride 1), so that a pixel is often the maximum of several; windows that tile without
    // overlap or padding, the last column left out; fewer windows along an axis than the
    // backward pass has phases.
    let cases = [
        (3, 2, 1, (9, 7)),
        (3, 2, 1, (9, 16)),
        (3, 2, 1, (4, 8)),
        (3, 1, 1, (9, 7)),
        (2, 2, 0, (9, 7)),
        (3, 1, 1, (2, 5)),
    ];
    for (kernel, stride, pad, (h, w)) in cases {
        let mut g = Graph::new();
        let x = g.input("x", &[3, 5, h, w]);
        let y = g.maxpool2d(x, kernel, stride, pad).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        // Half the inputs zero, as after a relu: windows with ties, where the first maximum in
        // scan order takes the gradient.
        let xv: Vec<f64> = feed(&exe, &g, x, &mut rng).into_iter().map(|v| v.max(0.0)).collect();
        exe.write(x, &to_f32(&xv)).unwrap();
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let out = |size: usize| (size + 2 * pad - kernel) / stride + 1;
        let (out_h, out_w) = (out(h), out(w));
        let p = MaxPool2d { planes: 15, h, w, out_h, out_w, kernel, stride, pad };
        let (want, argmax) = r::pool::maxpool_forward(&p, &xv);
        let case = format!("{kernel}x{kernel} stride {stride} pad {pad} over {h}x{w}");
        assert_eq!(g.shape(y), [3, 5, out_h, out_w], "{case}");
        assert_close(&format!("{case} maxpool y"), &read(&exe, y), &want, 0.0);
        let want_dx = r::pool::maxpool_backward(&p, &argmax, &dy);
        assert_close(&format!("{case} maxpool dx"), &read_grad(&exe, x), &want_dx, TOL);
        // Windows add to dx: a second run starts it from zero again.
        exe.run().unwrap();
        assert_close(&format!("{case} maxpool dx, second run"), &read_grad(&exe, x), &want_dx, TOL);
        // (Profiling reruns the dispatches, last: dx is not cleared between them.)
        let labels: Vec<&str> = exe.profile().unwrap().into_iter().map(|d| d.kernel).collect();
        let quads = (kernel, stride, pad, w % 8) == (3, 2, 1, 0);
        let stem_pool = labels.iter().any(|l| l.starts_with("maxpool_forward_3x3s2_quads"));
        assert_eq!(stem_pool, quads, "{case}: {labels:?}");
    }

    // Two pools of one input: the second adds its gradient to the first's.
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3, 8, 6]);
    let pools = [0, 1].map(|_| g.maxpool2d(x, 3, 2, 1).unwrap());
    let y = g.add(pools[0], pools[1]).unwrap();
    let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
    let xv = feed(&exe, &g, x, &mut rng);
    let dy = seed_grad(&exe, &g, y, &mut rng);
    exe.run().unwrap();
    let p = MaxPool2d { planes: 6, h: 8, w: 6, out_h: 4, out_w: 3, kernel: 3, stride: 2, pad: 1 };
    let (_, argmax) = r::pool::maxpool_forward(&p, &xv);
    let twice: Vec<f64> = r::pool::maxpool_backward(&p, &argmax, &dy).iter().map(|v| 2.0 * v).collect();
    assert_close("maxpool used twice dx", &read_grad(&exe, x), &twice, TOL);

    // Over planes of 63 pixels, and of 24 (in fours: four at a time).
    for (h, w) in [(7, 9), (4, 6)] {
        let mut g = Graph::new();
        let x = g.input("x", &[3, 5, h, w]);
        let y = g.global_avgpool(x).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let xv = feed(&exe, &g, x, &mut rng);
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let pixels = h * w;
        let (want_y, want_dx) =
            (r::pool::global_avgpool_forward(&xv, pixels), r::pool::global_avgpool_backward(&dy, pixels));
        assert_close(&format!("{h}x{w} avgpool y"), &read(&exe, y), &want_y, TOL);
        assert_close(&format!("{h}x{w} avgpool dx"), &read_grad(&exe, x), &want_dx, TOL);
    }
}

#[test]
fn linear_matches_reference() {
    // Small layers run the row kernels: feature counts off any multiple, one feature, a batch
    // of one. Larger ones run as a 1x1 convolution's GEMM: feature counts off the channel
    // quads, batches off the 8-pixel tiles, sizes spanning several channel and weight tiles.
    let cases = [
        ((3, 13, 7), true),
        ((3, 13, 7), false),
        ((9, 6, 10), true),
        ((1, 1, 5), true),
        ((37, 70, 130), true),
        ((2, 96, 10), false),
        ((41, 150, 173), true),
        ((130, 90, 93), false),
        // Features in fours run linear_subgroup.wgsl's kernels on subgroup adapters: both axes
        // (a batch off the eight samples, more outputs than a workgroup's lanes), the inputs
        // alone, the outputs alone.
        ((13, 20, 68), true),
        ((16, 36, 10), true),
        ((5, 6, 12), false),
        // Past ROWS_MAX_MACS, within SHARED_ROWS_MAX_MACS: the subgroup forms still run it.
        ((16, 256, 300), true),
    ];
    let rows = |&((batch, in_features, out_features), _): &((usize, usize, usize), bool)| {
        Linear { batch, in_features, out_features, has_bias: false, activation: OutputActivation::None }
            .runs_rows(gpu().subgroups)
    };
    assert!(cases.iter().any(rows) && !cases.iter().all(rows), "both paths are tested");
    for ((batch, in_features, out_features), bias) in cases {
        let mut g = Graph::new();
        let x = g.input("x", &[batch, in_features]);
        let w = g.param("w", &[out_features, in_features, 1, 1]).unwrap();
        let b = bias.then(|| g.param("b", &[out_features]).unwrap());
        let y = g.linear(x, w, b).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(600);
        let (xv, wv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, w, &mut rng));
        let bv = b.map(|b| feed(&exe, &g, b, &mut rng));
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let l = Linear { batch, in_features, out_features, has_bias: bias, activation: OutputActivation::None };
        assert_close("y", &read(&exe, y), &r::linear::forward(&l, &xv, &wv, bv.as_deref()), TOL);
        let (dx, dw, db) = r::linear::backward(&l, &xv, &wv, &dy);
        assert_close("dx", &read_grad(&exe, x), &dx, TOL);
        assert_close("dw", &read_grad(&exe, w), &dw, TOL);
        if let Some(b) = b {
            assert_close("db", &read_grad(&exe, b), &db, TOL);
        }
    }
}

/// A linear layer applied twice to the same x with the same weight and bias: the second
/// backward pass adds to every gradient, on both paths.
#[test]
fn linear_gradients_add_up_when_used_twice() {
    for (batch, in_features, out_features) in [(5, 13, 7), (41, 150, 173), (11, 24, 8)] {
        let mut g = Graph::new();
        let x = g.input("x", &[batch, in_features]);
        let w = g.param("w", &[out_features, in_features]).unwrap();
        let b = g.param("b", &[out_features]).unwrap();
        let first = g.linear(x, w, Some(b)).unwrap();
        let second = g.linear(x, w, Some(b)).unwrap();
        let y = g.add(first, second).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(610);
        let (xv, wv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, w, &mut rng));
        feed(&exe, &g, b, &mut rng);
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let l = Linear { batch, in_features, out_features, has_bias: true, activation: OutputActivation::None };
        let twice = |v: Vec<f64>| v.into_iter().map(|v| 2.0 * v).collect::<Vec<_>>();
        let (dx, dw, db) = r::linear::backward(&l, &xv, &wv, &dy);
        assert_close("dx", &read_grad(&exe, x), &twice(dx), TOL);
        assert_close("dw", &read_grad(&exe, w), &twice(dw), TOL);
        assert_close("db", &read_grad(&exe, b), &twice(db), TOL);
    }
}

/// The row kernels and their subgroup forms (features in fours), reading storage or textures,
/// store the same bits: each sums the same terms in the same order, whichever loads them. Every
/// gradient adds to what is there, so the accumulating paths are compared too.
#[test]
fn linear_row_kernels_agree_bit_for_bit() {
    assert!(gpu().subgroups, "the test adapter has no subgroups of eight lanes: the broadcast path goes untested");
    let cases = [(13, 20, 68), (16, 36, 10), (5, 6, 12), (1, 4, 4), (9, 132, 20), (3, 8, 10)];
    for (batch, in_features, out_features) in cases {
        let layer = Linear { batch, in_features, out_features, has_bias: true, activation: OutputActivation::None };
        assert!(layer.runs_rows(gpu().subgroups));
        let mut rng = rng(630);
        let sizes = [batch * in_features, out_features * in_features, out_features, batch * out_features];
        let inputs = sizes.map(|n| to_f32(&randn(&mut rng, n)));
        let starts =
            [batch * in_features, out_features * in_features, out_features].map(|n| to_f32(&randn(&mut rng, n)));
        let case = format!("{batch}x{in_features}->{out_features}");
        // The row kernels, then their subgroup forms reading storage and reading textures
        // (`Gpu::texture_reads`: x, the weight and dy, where each is whole vec4s).
        let ways = [(gpu(), false), (gpu(), true), (other_texture_reads(), true)];
        let results = ways.clone().map(|(gpu, subgroups)| {
            let names = ["x", "w", "bias", "dy"];
            let [x, w, bias, dy] = std::array::from_fn(|i| gpu.upload(names[i], &inputs[i]));
            let y = gpu.storage("y", batch * out_features);
            let grads = starts.each_ref().map(|start| gpu.upload("grad", start));
            let mut dispatches = vec![layer.forward_rows(&gpu, [&x, &w, &bias, &y], subgroups)];
            let targets = grads.each_ref().map(|slice| Some(GradTarget { slice, accumulate: true }));
            dispatches.extend(layer.backward_rows(&gpu, [&x, &w, &dy], targets, subgroups));
            let textured: Vec<_> = dispatches.iter().map(|d| d.textures() > 0).collect();
            let quads = |n: usize| subgroups && gpu.texture_reads && n.is_multiple_of(4);
            let dy_whole = (batch * out_features).is_multiple_of(4);
            let expected = [quads(in_features), quads(out_features), quads(in_features) && dy_whole, false];
            assert_eq!(textured, expected, "{case}: which kernels read textures (forward, dx, dw, db)");
            gpu.run(&dispatches);
            [&y, &grads[0], &grads[1], &grads[2]].map(|b| gpu.read::<f32>(b).unwrap())
        });
        for (way, (gpu, _)) in ways.iter().enumerate().skip(1) {
            let reads = if gpu.texture_reads { "textures" } else { "storage" };
            for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(results[0].iter().zip(&results[way])) {
                let differing = a.iter().zip(b).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                let subgroups = format!("their subgroup forms reading {reads}");
                assert_eq!(differing, 0, "{case}: {name} values that differ between the row kernels and {subgroups}");
            }
        }
        // And they are right.
        let wide = |v: &[f32]| to_f64(v);
        let [xv, wv, bv, dyv] = inputs.each_ref().map(|v| wide(v));
        assert_close(
            &format!("{case} y"),
            &wide(&results[1][0]),
            &r::linear::forward(&layer, &xv, &wv, Some(&bv)),
            TOL,
        );
        let (dx, dw, db) = r::linear::backward(&layer, &xv, &wv, &dyv);
        for (i, (name, want)) in [("dx", dx), ("dw", dw), ("db", db)].into_iter().enumerate() {
            let added: Vec<f64> = results[1][i + 1].iter().zip(&starts[i]).map(|(a, b)| (a - b) as f64).collect();
            assert_close(&format!("{case} {name}"), &added, &want, TOL);
        }
    }
}

/// A linear layer with a fused activation (eval-only, inference folding's) stores exactly
/// what the separate activation op computes from its output, on both paths.
#[test]
fn linear_fused_activation_matches_the_separate_op() {
    let activations = [
        (OutputActivation::Relu, Activation::Relu),
        (OutputActivation::Relu6, Activation::Relu6),
        (OutputActivation::Sigmoid, Activation::Sigmoid),
        (OutputActivation::Gelu, Activation::Gelu),
    ];
    for (batch, in_features, out_features) in [(5, 13, 7), (41, 150, 173)] {
        for (fused_kind, kind) in activations {
            let run = |fused: bool| {
                let mut g = Graph::new();
                let x = g.input("x", &[batch, in_features]);
                let w = g.param("w", &[out_features, in_features]).unwrap();
                let b = g.param("b", &[out_features]).unwrap();
                let y = match fused {
                    true => g.linear_fused(x, w, Some(b), fused_kind).unwrap(),
                    false => {
                        let y = g.linear(x, w, Some(b)).unwrap();
                        g.activation(y, kind)
                    }
                };
                let mut exe = Executor::new(gpu(), &g, Plan::eval()).unwrap();
                let mut rng = rng(620);
                for t in [x, w, b] {
                    // Scaled so that sigmoid and relu6 see both of their tails.
                    let v: Vec<f32> = randn(&mut rng, g.info(t).numel()).iter().map(|v| 3.0 * *v as f32).collect();
                    exe.write(t, &v).unwrap();
                }
                exe.run().unwrap();
                exe.read(y).unwrap()
            };
            let (fused, separate) = (run(true), run(false));
            let differing = fused.iter().zip(&separate).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            let case = format!("{batch}x{in_features}->{out_features} {fused_kind:?}");
            assert_eq!(differing, 0, "{case}: fused values that differ from the separate op");
        }
    }
}

/// A router's gate in one op (inference folding's `RouterGate`): its fused kernel and the
/// three ops it was made from store the same bits in all three outputs, and both match the
/// reference. Batches off the kernel's eight samples, more hidden units and channels than a
/// workgroup's lanes; shapes off the fused kernel's quads run the three ops.
#[test]
fn router_gate_paths_agree_bit_for_bit_and_match_reference() {
    use kdna::ops::router::RouterGate;
    assert!(gpu().subgroups && gpu().texture_reads, "the test adapter cannot run the fused router kernel");
    let cases = [
        ((11, 12, 4, 2 * 2), true),
        ((3, 20, 8, 4 * 6), true),
        ((16, 132, 68, 8 * 8), true),
        ((1, 4, 4, 4), true),
        ((5, 6, 3, 3 * 3), false),
        ((9, 16, 4, 7 * 7), false),
    ];
    for ((batch, channels, hidden, spatial), fusable) in cases {
        let r = RouterGate { batch, channels, hidden, spatial };
        let case = format!("{batch}x{channels}->{hidden}, {spatial} pixels");
        let mut rng = rng(640);
        let sizes = [batch * channels * spatial, hidden * channels, hidden, channels * hidden, channels];
        // Scaled so that the relu and the sigmoid see both of their tails.
        let inputs = sizes.map(|n| to_f32(&randn(&mut rng, n).iter().map(|v| 3.0 * v).collect::<Vec<_>>()));
        let gpu = gpu();
        let slices = inputs.each_ref().map(|v| gpu.upload("router input", v));
        let run = |fused: bool| {
            let outputs = [batch * channels, batch * hidden, batch * channels].map(|n| gpu.storage("router output", n));
            let scratch: Vec<_> = r.scratch(false).iter().map(|&n| gpu.storage("router scratch", n)).collect();
            let b = Bound {
                inputs: slices.iter().collect(),
                outputs: outputs.iter().collect(),
                scratch: scratch.iter().collect(),
            };
            assert_eq!(r.runs_fused(&gpu, [&slices[0], &slices[1], &slices[3]]), fusable, "{case}: runs fused");
            let dispatches = match fused {
                true => vec![r.forward_fused(&gpu, &b)],
                false => {
                    let apart = r.forward_apart(&gpu, &b, Mode::Eval, &[false; 5]);
                    [apart.prepare, apart.run].into_iter().flatten().collect()
                }
            };
            gpu.run(&dispatches);
            outputs.map(|o| gpu.read::<f32>(&o).unwrap())
        };
        let apart = run(false);
        if fusable {
            let fused = run(true);
            for (name, (a, b)) in ["pooled", "hidden", "gate"].iter().zip(apart.iter().zip(&fused)) {
                let differing = a.iter().zip(b).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(
                    differing, 0,
                    "{case}: {name} values that differ between the fused kernel and the three ops"
                );
            }
        }
        let [x, w1, b1, w2, b2] = inputs.each_ref().map(|v| to_f64(v));
        let want = r::router::forward(&r, &x, [&w1, &b1, &w2, &b2]);
        for (name, (got, want)) in ["pooled", "hidden", "gate"].iter().zip(apart.iter().zip(&want)) {
            assert_close(&format!("{case} {name}"), &to_f64(got), want, TOL);
        }
    }
}

#[test]
fn channel_scale_matches_reference() {
    // Over planes of 63 pixels, and of 24 (in fours: the gradients four at a time).
    for (h, w) in [(7, 9), (4, 6)] {
        let mut g = Graph::new();
        let x = g.input("x", &[3, 5, h, w]);
        let gate = g.input("gate", &[3, 5]);
        let y = g.channel_scale(x, gate).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(700);
        let (xv, sv) = (feed(&exe, &g, x, &mut rng), feed(&exe, &g, gate, &mut rng));
        let dy = seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let pixels = h * w;
        assert_close("y", &read(&exe, y), &r::elementwise::channel_scale_forward(&xv, &sv, pixels), TOL);
        let (dx, dgate) = r::elementwise::channel_scale_backward(&xv, &sv, &dy, pixels);
        assert_close(&format!("{h}x{w} dx"), &read_grad(&exe, x), &dx, TOL);
        assert_close(&format!("{h}x{w} dgate"), &read_grad(&exe, gate), &dgate, TOL);
    }
}

#[test]
fn cross_entropy_matches_reference() {
    for smoothing in [0.0f32, 0.1] {
        let mut g = Graph::new();
        let x = g.input("logits", &[3, 11]);
        let labels = g.labels("labels", 3);
        let loss = g.cross_entropy(x, labels, smoothing).unwrap();
        let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, loss)).unwrap();
        let mut rng = rng(800);
        let xv: Vec<f64> = f32_exact(randn(&mut rng, 33).iter().map(|v| 3.0 * v).collect());
        exe.write(x, &to_f32(&xv)).unwrap();
        let lv = [4usize, 10, 0];
        exe.write_labels(labels, &lv.map(|l| l as u32)).unwrap();
        exe.run().unwrap();
        let (want_loss, want_correct) = r::loss::cross_entropy_forward(&xv, &lv, 11, smoothing as f64);
        let got = read(&exe, loss);
        assert_close("loss", &got[..1], &[want_loss], TOL);
        assert_eq!(got[1], want_correct as f64, "correct count");
        let want = r::loss::cross_entropy_backward(&xv, &lv, 11, smoothing as f64);
        assert_close("dlogits", &read_grad(&exe, x), &want, TOL);
    }
}

/// A second device on the test adapter that reads streams the other way
/// (`Gpu::texture_reads`): the kernels that read textures and their storage twins.
fn other_texture_reads() -> Arc<kdna::gpu::Gpu> {
    static OTHER: OnceLock<Arc<kdna::gpu::Gpu>> = OnceLock::new();
    OTHER
        .get_or_init(|| {
            let mut other = kdna::gpu::Gpu::new(None).expect("a second device on the test adapter");
            other.texture_reads = !gpu().texture_reads;
            Arc::new(other)
        })
        .clone()
}

/// Whether any of `values` differ from `reference` in a bit.
fn bits_differ(values: &[f64], reference: &[f64]) -> usize {
    values.iter().zip(reference).filter(|(a, b)| a.to_bits() != b.to_bits()).count()
}

/// Runs `run` on the test adapter's device and on one that reads streams the other way, and
/// asserts that the tensors it reads back (`names`, in order) agree bit for bit.
fn both_ways_agree(names: &[&str], run: impl Fn(Arc<kdna::gpu::Gpu>) -> Vec<Vec<f64>>) {
    let results = [gpu(), other_texture_reads()].map(run);
    for (name, (a, b)) in names.iter().zip(results[0].iter().zip(&results[1])) {
        assert_eq!(bits_differ(a, b), 0, "{name} values that differ between the ways");
    }
}

/// Asserts that `profile` ran each of `streams` (a storage entry point, and the textures its
/// twin reads) once: the twin (`{entry}_textured`) where the device reads textures.
fn assert_streams(profile: &[DispatchTime], reads_textures: bool, streams: &[(&str, usize)]) {
    for &(entry, sources) in streams {
        let textured = format!("{entry}_textured");
        let expected = if reads_textures { (textured.as_str(), sources) } else { (entry, 0) };
        let found: Vec<_> = profile.iter().filter(|d| d.kernel.starts_with(entry)).collect();
        assert!(found.len() == 1 && (found[0].kernel, found[0].textures) == expected, "{entry}: {profile:?}");
    }
}

#[test]
fn sgd_matches_reference_over_steps() {
    // Over a texture's row, where the quads read textures (rows of texture_width texels).
    let n = 4 * texture_width(&gpu()) as usize + 1001;
    let mut rng = rng(900);
    let mut param = f32_exact(randn(&mut rng, n));
    let mut velocity = vec![0.0; n];
    // Both ways of reading the operands, from the same state, on one device each.
    let devices = [gpu(), other_texture_reads()];
    let state: Vec<_> = devices
        .iter()
        .map(|gpu| (gpu.upload("param", &to_f32(&param)), gpu.storage("grad", n), gpu.storage("velocity", n)))
        .collect();
    for (step, nesterov) in [(0, false), (1, false), (2, true)] {
        let opt = Sgd { lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 1e-3, nesterov };
        let grad = f32_exact(randn(&mut rng, n));
        r::sgd::step(&opt, &mut param, &grad, &mut velocity, step == 0);
        let mut results = Vec::new();
        for (gpu, (gp, gg, gv)) in devices.iter().zip(&state) {
            gpu.write(gg, &to_f32(&grad));
            let dispatches: Vec<_> = opt.dispatches(gpu, gp, gg, gv, step == 0).into_iter().map(|(d, _)| d).collect();
            assert_eq!(dispatches.len(), 2, "{n} elements: a four-wide part and a rest");
            let textures = dispatches.iter().map(|d| d.textures()).collect::<Vec<_>>();
            assert_eq!(textures, [if gpu.texture_reads { 3 } else { 0 }, 0], "textures each dispatch reads");
            gpu.run(&dispatches);
            let (p, v) = (to_f64(&gpu.read(gp).unwrap()), to_f64(&gpu.read(gv).unwrap()));
            let reads = if gpu.texture_reads { "textures" } else { "storage" };
            assert_close(&format!("param after step {step}, reading {reads}"), &p, &param, 1e-6);
            assert_close(&format!("velocity after step {step}, reading {reads}"), &v, &velocity, 1e-6);
            results.push([p, v]);
        }
        for (what, a, b) in [("param", &results[0][0], &results[1][0]), ("velocity", &results[0][1], &results[1][1])] {
            assert_eq!(bits_differ(a, b), 0, "{what} after step {step}: values that differ between the ways");
        }
    }
}

/// The BatchNorm kernels that read their streams through textures (`Gpu::texture_reads`)
/// compute what their storage twins do, bit for bit: statistics, output, running statistics
/// and every gradient, with and without a fused relu, through the serial and workgroup
/// reductions. Where the device reads textures, train mode runs each reduction and the
/// elementwise pass after it in one dispatch, over storage too where planes do not come in
/// fours (a router's [N, C]). (Both ways match the reference:
/// batchnorm_matches_reference_in_both_modes runs this adapter's way.)
#[test]
fn batchnorm_reading_textures_changes_no_value() {
    let cases = [
        (vec![3, 6, 4, 3], OutputActivation::Relu, "_serial_quads_textured", 1),
        (vec![3, 2, 20, 24], OutputActivation::None, "_quads_textured", 1),
        (vec![5, 3, 2, 3], OutputActivation::Relu, "_serial", 0),
        (vec![6, 7], OutputActivation::None, "_serial", 0),
    ];
    for (i, (shape, activation, one_pass, textures)) in cases.into_iter().enumerate() {
        for mode in [Mode::Train, Mode::Eval] {
            let results: Vec<Vec<Vec<f64>>> = [gpu(), other_texture_reads()]
                .into_iter()
                .map(|device| {
                    let reads_textures = device.texture_reads;
                    let mut g = Graph::new();
                    let [x, w, b, rm, rv] = batchnorm_inputs(&mut g, &shape);
                    let y = g.batchnorm_activated(x, [w, b, rm, rv], 1e-5, 0.1, activation).unwrap();
                    let mut exe = Executor::new(device, &g, plan(mode, y)).unwrap();
                    let mut rng = rng(350 + i as u64);
                    for t in [x, w, b, rm] {
                        feed(&exe, &g, t, &mut rng);
                    }
                    seed_grad(&exe, &g, y, &mut rng);
                    exe.run().unwrap();
                    let mut out = vec![read(&exe, y), read(&exe, rm), read(&exe, rv)];
                    out.extend([x, w, b].map(|t| read_grad(&exe, t)));
                    if reads_textures && mode == Mode::Train {
                        // Each way is one pass (over textures of x, and of dy, where planes
                        // come in fours): the reduction and the elementwise kernel in one
                        // dispatch. The backward pass reads x as the forward pass left it.
                        let profile = exe.profile().unwrap();
                        let copies: Vec<_> =
                            profile.iter().map(|d| (d.kernel.to_string(), d.textures, d.texture_copies)).collect();
                        let kernel = |way| format!("batchnorm_{way}{one_pass}");
                        let expected =
                            [(kernel("train"), textures, textures), (kernel("backward"), 2 * textures, textures)];
                        assert_eq!(copies, expected, "{shape:?}: {profile:?}");
                    }
                    out
                })
                .collect();
            let names = ["y", "running mean", "running var", "dx", "dweight", "dbias"];
            for (name, (a, b)) in names.iter().zip(results[0].iter().zip(&results[1])) {
                let case = format!("{shape:?} {activation:?} {mode:?}");
                assert_eq!(bits_differ(a, b), 0, "{case}: {name} values that differ between the ways");
            }
        }
    }
}

/// The weight gradient's strided reductions read the passes' partial sums through a texture
/// where the device reads streams so, and from storage where not: both give dw bit for bit,
/// over one pass and over a 2x2 map's pass per tap of a 3x3 weight, and over the one pass of a
/// 1x1 weight in several chunks, overwriting dw and adding to it (a weight used twice).
/// (conv2d_matches_reference checks the values against the reference.)
#[test]
fn weight_reduction_reading_textures_changes_no_value() {
    let cases = [
        ([2, 12, 9, 8], 3, "reduce_weight_partials_3x3_strided"),
        ([3, 20, 2, 2], 3, "reduce_weight_partials_3x3_strided"),
        ([2, 12, 20, 16], 1, "reduce_weight_partials_1x1"),
    ];
    for (i, (xs, k, entry)) in cases.into_iter().enumerate() {
        let results: Vec<Vec<f64>> = [gpu(), other_texture_reads()]
            .into_iter()
            .map(|device| {
                let reads_textures = device.texture_reads;
                let mut g = Graph::new();
                let x = g.input("x", &xs);
                let w = g.param("w", &[xs[1], xs[1], k, k]).unwrap();
                let y0 = g.conv2d(x, w, None, Conv2dConfig::new(1, k / 2)).unwrap();
                let y1 = g.conv2d(y0, w, None, Conv2dConfig::new(1, k / 2)).unwrap();
                let mut exe = Executor::new(device, &g, gradient_plan(Mode::Train, vec![y1], false)).unwrap();
                let mut rng = rng(420 + i as u64);
                for t in [x, w] {
                    feed(&exe, &g, t, &mut rng);
                }
                seed_grad(&exe, &g, y1, &mut rng);
                exe.run().unwrap();
                let dw = read_grad(&exe, w);
                let profile = exe.profile().unwrap();
                let reductions: Vec<_> = profile.iter().filter(|d| d.kernel.starts_with(entry)).collect();
                let textured = format!("{entry}_textured");
                let expected = if reads_textures { (textured.as_str(), 1) } else { (entry, 0) };
                assert_eq!(reductions.len(), 2, "{xs:?}: a reduction per use of w: {profile:?}");
                assert!(reductions.iter().all(|d| (d.kernel, d.textures) == expected), "{xs:?}: {reductions:?}");
                dw
            })
            .collect();
        assert_eq!(bits_differ(&results[0], &results[1]), 0, "{xs:?}: dw values that differ between the ways");
    }
}

/// The copies of a convolution's input and output gradient to channels-last read their source
/// through a texture where the device reads streams so, and from storage where not: both give
/// every value and gradient bit for bit, with a router's gate applied in the input copy (read
/// through a texture too where its channels come in fours), on rows of four pixels
/// (`to_channels_last_rows`) and on a 2x2 map (`_pairs`).
/// (conv2d_matches_reference checks the values against the reference.)
#[test]
fn channels_last_copies_reading_textures_change_no_value() {
    let cases = [
        ([2, 12, 9, 8], "to_channels_last_rows"),
        ([3, 20, 2, 2], "to_channels_last_pairs"),
        ([2, 6, 9, 8], "to_channels_last_rows"),
        ([3, 10, 2, 2], "to_channels_last_pairs"),
    ];
    for (i, (xs, entry)) in cases.into_iter().enumerate() {
        let results: Vec<Vec<Vec<f64>>> = [gpu(), other_texture_reads()]
            .into_iter()
            .map(|device| {
                let reads_textures = device.texture_reads;
                let mut g = Graph::new();
                let x = g.input("x", &xs);
                let gate = g.input("gate", &[xs[0], xs[1]]);
                let w = g.param("w", &[xs[1] + 4, xs[1], 3, 3]).unwrap();
                let gated = g.channel_scale(x, gate).unwrap();
                let y = g.conv2d(gated, w, None, Conv2dConfig::new(1, 1)).unwrap();
                let mut exe = Executor::new(device, &g, plan(Mode::Train, y)).unwrap();
                let mut rng = rng(430 + i as u64);
                for t in [x, gate, w] {
                    feed(&exe, &g, t, &mut rng);
                }
                seed_grad(&exe, &g, y, &mut rng);
                exe.run().unwrap();
                let profile = exe.profile().unwrap();
                // The gate is applied in the input copy, not by a kernel of its own.
                assert!(!profile.iter().any(|d| d.kernel.starts_with("channel_scale_forward")), "{xs:?}: {profile:?}");
                let copies: Vec<_> =
                    profile.iter().filter(|d| d.kernel.starts_with(entry)).map(|d| (d.kernel, d.textures)).collect();
                // The copy of x (gated), then the copy of dy.
                let (gated, textured) = (format!("{entry}_gated_textured"), format!("{entry}_textured"));
                let expected = match (reads_textures, xs[1] % 4) {
                    (true, 0) => vec![(gated.as_str(), 2), (textured.as_str(), 1)],
                    (true, _) => vec![(textured.as_str(), 1), (textured.as_str(), 1)],
                    (false, _) => vec![(entry, 0), (entry, 0)],
                };
                assert_eq!(copies, expected, "{xs:?}: the copies of x and dy: {profile:?}");
                [y].map(|t| read(&exe, t)).into_iter().chain([x, gate, w].map(|t| read_grad(&exe, t))).collect()
            })
            .collect();
        for (name, (a, b)) in ["y", "dx", "dgate", "dw"].iter().zip(results[0].iter().zip(&results[1])) {
            assert_eq!(bits_differ(a, b), 0, "{xs:?}: {name} values that differ between the ways");
        }
    }
}

/// A stem's weight gradient copies dy to channels-last four pixels at a time, reading it
/// through a texture where the device reads streams so, and from storage where not: both give
/// dw bit for bit. (convolutions_with_columns_folded_into_channels_match_reference checks the
/// values.)
#[test]
fn stem_gradient_copy_reading_textures_changes_no_value() {
    both_ways_agree(&["dw"], |device| {
        let reads_textures = device.texture_reads;
        let mut g = Graph::new();
        let x = g.input("x", &[2, 3, 12, 12]);
        let w = g.param("w", &[8, 3, 7, 7]).unwrap();
        let y = g.conv2d(x, w, None, Conv2dConfig::new(2, 3)).unwrap();
        let mut exe = Executor::new(device, &g, gradient_plan(Mode::Train, vec![y], false)).unwrap();
        let mut rng = rng(460);
        for t in [x, w] {
            feed(&exe, &g, t, &mut rng);
        }
        seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        assert_streams(&exe.profile().unwrap(), reads_textures, &[("gradient_channels_last_quads", 1)]);
        vec![read_grad(&exe, w)]
    });
}

/// The stem's max pool and a residual add with its relu read their inputs through textures
/// where the device reads streams so, and from storage where not: both give the values and
/// every gradient bit for bit. (pooling_matches_reference and
/// residual_add_sends_the_gradient_to_both_inputs check the values.)
#[test]
fn pool_and_add_reading_textures_change_no_value() {
    both_ways_agree(&["y", "dx", "db"], |device| {
        let reads_textures = device.texture_reads;
        let mut g = Graph::new();
        let x = g.input("x", &[2, 3, 10, 16]);
        let pooled = g.maxpool2d(x, 3, 2, 1).unwrap();
        let pooled_shape = g.shape(pooled).to_vec();
        let b = g.input("b", &pooled_shape);
        let y = g.add_relu(pooled, b).unwrap();
        let mut exe = Executor::new(device, &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(440);
        for t in [x, b] {
            feed(&exe, &g, t, &mut rng);
        }
        seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let streams = [("maxpool_forward_3x3s2_quads", 1), ("add_forward_quads", 2), ("add_backward_masked_quads", 2)];
        assert_streams(&exe.profile().unwrap(), reads_textures, &streams);
        vec![read(&exe, y), read_grad(&exe, x), read_grad(&exe, b)]
    });
}

/// A router's gate and pools over planes whose pixels come in fours read their streams through
/// textures where the device reads streams so (the gate's two gradients in one pass), and from
/// storage where not: both give the values and every gradient bit for bit, dx both written and
/// added to. (channel_scale_matches_reference
/// and pooling_matches_reference check the values.)
#[test]
fn gate_and_average_pool_reading_textures_change_no_value() {
    both_ways_agree(&["y", "dx", "dgate"], |device| {
        let reads_textures = device.texture_reads;
        let mut g = Graph::new();
        let x = g.input("x", &[2, 6, 4, 4]);
        let gate = g.input("gate", &[2, 6]);
        let gated = g.channel_scale(x, gate).unwrap();
        let sum = g.add(gated, x).unwrap();
        let y = g.global_avgpool(sum).unwrap();
        let mut exe = Executor::new(device, &g, plan(Mode::Train, y)).unwrap();
        let mut rng = rng(450);
        for t in [x, gate] {
            feed(&exe, &g, t, &mut rng);
        }
        seed_grad(&exe, &g, y, &mut rng);
        exe.run().unwrap();
        let profile = exe.profile().unwrap();
        // Reading textures, the gate's two gradients come from one pass over dy.
        let gate_streams: &[_] = match reads_textures {
            true => &[("channel_scale_backward_quads", 2)],
            false => &[("channel_scale_backward_input_quads", 1), ("channel_scale_backward_gate_quads", 2)],
        };
        assert_streams(&profile, reads_textures, &[("global_avgpool_forward_quads", 1)]);
        assert_streams(&profile, reads_textures, gate_streams);
        assert!(profile.iter().any(|d| d.kernel == "global_avgpool_backward_quads"), "{profile:?}");
        vec![read(&exe, y), read_grad(&exe, x), read_grad(&exe, gate)]
    });
}

#[test]
fn adamw_matches_reference_over_steps() {
    let gpu = gpu();
    let n = 1001;
    let mut rng = rng(910);
    let mut param = f32_exact(randn(&mut rng, n));
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let gp = gpu.upload("param", &to_f32(&param));
    let [gg, gm, gv] = ["grad", "exp_avg", "exp_avg_sq"].map(|name| gpu.storage(name, n));
    // betas other than torch's defaults, so each enters its own place.
    let opt = AdamW { lr: 0.01, beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 };
    for step in 1..=4 {
        // Gradients of mixed scales: some moments meet eps.
        let grad: Vec<f64> =
            f32_exact(randn(&mut rng, n).iter().enumerate().map(|(i, g)| g * [1.0, 1e-4, 10.0][i % 3]).collect());
        gpu.write(&gg, &to_f32(&grad));
        gpu.run(&[opt.dispatch(&gpu, [&gp, &gg, &gm, &gv], step)]);
        r::adamw::step(&opt, &mut param, &grad, &mut m, &mut v, step);
        assert_close(&format!("param after step {step}"), &to_f64(&gpu.read(&gp).unwrap()), &param, 1e-6);
        assert_close(&format!("exp_avg after step {step}"), &to_f64(&gpu.read(&gm).unwrap()), &m, 1e-6);
        assert_close(&format!("exp_avg_sq after step {step}"), &to_f64(&gpu.read(&gv).unwrap()), &v, 1e-6);
    }
}

#[test]
fn a_tensor_beyond_the_binding_limit_is_a_clear_error() {
    let gpu = gpu();
    let limit = gpu.device.limits().max_storage_buffer_binding_size as usize;
    let mut g = Graph::new();
    let x = g.input("images", &[limit / 4 + 1, 1, 1, 1]);
    let y = g.relu(x);
    let err = Executor::new(gpu, &g, plan(Mode::Train, y)).err().expect("too large to bind").to_string();
    assert!(err.contains("\"images\"") && err.contains("smaller batch"), "{err}");
}

/// A router's BatchNorm sees one value per sample: at batch 2 the input gradient is a
/// near-total cancellation (the true result is ~eps / var of each term), which the kernels
/// must still get right, as torch's double accumulators do.
#[test]
fn batchnorm_input_gradient_survives_cancellation_at_batch_two() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 5]);
    let w = g.param("weight", &[5]).unwrap();
    let b = g.param("bias", &[5]).unwrap();
    let rm = g.state("running_mean", &[5], Init::Zeros).unwrap();
    let rv = g.state("running_var", &[5], Init::Ones).unwrap();
    let y = g.batchnorm(x, w, b, rm, rv, 1e-5, 0.1).unwrap();
    let mut exe = Executor::new(gpu(), &g, plan(Mode::Train, y)).unwrap();
    // Channel spreads from 1e-2 to 1: eps / var from 1e-1 down to 1e-5.
    let xv = f32_exact(vec![1.8, 4.87, -2.51, -1.12, 0.3, 1.49, 5.06, -3.37, -1.30, 0.31]);
    exe.write(x, &to_f32(&xv)).unwrap();
    let wv = f32_exact(vec![0.9, 1.1, 1.3, 0.7, 1.0]);
    exe.write(w, &to_f32(&wv)).unwrap();
    let mut rng = rng(310);
    let dy = seed_grad(&exe, &g, y, &mut rng);
    exe.run().unwrap();
    let op = batchnorm_op(&[2, 5]);
    let (dx, _, _) = r::batchnorm::backward(&op, &xv, &wv, &dy, None);
    // Each channel's gradient against its own size: plain f32 is off by up to 1e-2 here.
    let got = read_grad(&exe, x);
    for c in 0..5 {
        let (g2, w2) = ([got[c], got[5 + c]], [dx[c], dx[5 + c]]);
        let scale = w2[0].abs().max(w2[1].abs());
        let err = (g2[0] - w2[0]).abs().max((g2[1] - w2[1]).abs());
        assert!(err <= 1e-5 * scale, "channel {c}: got {g2:?}, want {w2:?}");
    }
}

/// A run copies a buffer into a texture again only where a dispatch wrote it since the last
/// copy (`copying_each_source_once`), and a dispatch that read its own texture uncopied (a band
/// after the first of a pass) reads the texture its source's was redirected to: the values are
/// those of copying before every dispatch.
#[test]
fn a_run_copies_a_buffer_into_a_texture_again_only_after_a_write() {
    let gpu = gpu();
    assert!(gpu.texture_reads, "the test adapter reads no streams through textures: the copy pass goes untested");
    let n = 4 * texture_width(&gpu) as usize + 64;
    let mut rng = rng(470);
    let [a, b, c] = [0, 1, 2].map(|_| to_f32(&f32_exact(randn(&mut rng, n))));
    let [sa, sb, sc] = [&a, &b, &c].map(|v| gpu.upload("source", v));
    let outs: Vec<_> = (0..5).map(|_| gpu.storage("out", n)).collect();
    let bound = |inputs, out| Bound { inputs, outputs: vec![out], scratch: Vec::new() };
    // The residual add reads both operands through textures (four at a time).
    let add = |out| Add { len: n, activation: None }.forward(&gpu, &bound(vec![&sa, &sb], out), Mode::Train);
    let relu = ActivationOp { kind: Activation::Relu, len: n };
    let run: Vec<Dispatch> = [
        add(&outs[0]),
        // a := relu(c), between two reads of a.
        relu.forward(&gpu, &bound(vec![&sc], &sa), Mode::Train),
        add(&outs[1]),
        add(&outs[2]),
        add(&outs[3]),
    ]
    .into_iter()
    .flatten()
    .collect();
    // A second band of the last sum, reading the first's textures as it leaves them.
    let second_band = add(&outs[4]).remove(0).sharing_textures_of(&gpu, &run[4], |_| true);
    let run = copying_each_source_once(&gpu, Vec::new(), run.into_iter().chain([second_band]).collect());
    let copies: Vec<usize> = run.iter().map(Dispatch::texture_copies).collect();
    // a and b; none (no texture read); a again, as written; nothing more.
    assert_eq!(copies, [2, 0, 1, 0, 0, 0]);
    let mut encoder = gpu.encoder("copies");
    record_all(&mut encoder, &run);
    gpu.submit(encoder);
    let relu_c: Vec<f32> = c.iter().map(|v| v.max(0.0)).collect();
    let sum = |x: &[f32]| x.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<f32>>();
    for (i, want) in [sum(&a), sum(&relu_c), sum(&relu_c), sum(&relu_c), sum(&relu_c)].iter().enumerate() {
        let got: Vec<f32> = gpu.read(&outs[i]).unwrap();
        assert!(got == *want, "sum {i}: {} values differ", got.iter().zip(want).filter(|(g, w)| g != w).count());
    }
}
