//! Reference of [`crate::ops::conv2d`].

use crate::ops::conv2d::Conv2dShape;

/// Visits every (output element, weight element, input element) triple of the convolution:
/// `f(y_index, w_index, x_index)`.
fn for_each_tap(s: &Conv2dShape, mut f: impl FnMut(usize, usize, usize)) {
    let g = s.cfg.groups;
    let (cin_g, cout_g) = (s.c_in / g, s.c_out / g);
    let (sh, sw) = s.cfg.stride;
    let (ph, pw) = s.cfg.padding;
    for n in 0..s.batch {
        for co in 0..s.c_out {
            let group = co / cout_g;
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    let y_at = ((n * s.c_out + co) * s.out_h + oy) * s.out_w + ox;
                    for ci in 0..cin_g {
                        for ky in 0..s.kernel_h {
                            for kx in 0..s.kernel_w {
                                let iy = (oy * sh + ky) as isize - ph as isize;
                                let ix = (ox * sw + kx) as isize - pw as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let c = group * cin_g + ci;
                                let x_at = ((n * s.c_in + c) * s.h + iy as usize) * s.w + ix as usize;
                                let w_at = ((co * cin_g + ci) * s.kernel_h + ky) * s.kernel_w + kx;
                                f(y_at, w_at, x_at);
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn forward(s: &Conv2dShape, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let pixels = s.out_h * s.out_w;
    let mut y: Vec<f64> =
        (0..s.batch * s.c_out * pixels).map(|i| bias.map_or(0.0, |b| b[(i / pixels) % s.c_out])).collect();
    for_each_tap(s, |yi, wi, xi| y[yi] += w[wi] * x[xi]);
    y
}

/// Gradients (input, weight, bias) of `sum(forward(x, w, b) * dy)`.
pub fn backward(s: &Conv2dShape, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for_each_tap(s, |yi, wi, xi| {
        dx[xi] += w[wi] * dy[yi];
        dw[wi] += x[xi] * dy[yi];
    });
    let pixels = s.out_h * s.out_w;
    let mut db = vec![0.0; s.c_out];
    for (i, g) in dy.iter().enumerate() {
        db[(i / pixels) % s.c_out] += g;
    }
    (dx, dw, db)
}
