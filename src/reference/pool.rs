//! Reference of [`crate::ops::pool`].

use crate::ops::pool::MaxPool2d;

/// Output and, per output, the index of the chosen input within its plane.
pub fn maxpool_forward(p: &MaxPool2d, x: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut y = Vec::new();
    let mut argmax = Vec::new();
    for plane in 0..p.planes {
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                let mut best: Option<(f64, usize)> = None;
                for ky in 0..p.kernel {
                    for kx in 0..p.kernel {
                        let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                        let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                        if iy < 0 || ix < 0 || iy >= p.h as isize || ix >= p.w as isize {
                            continue;
                        }
                        let at = iy as usize * p.w + ix as usize;
                        let v = x[plane * p.h * p.w + at];
                        if best.is_none_or(|(b, _)| v > b) {
                            best = Some((v, at));
                        }
                    }
                }
                let (v, at) = best.expect("every window overlaps the input");
                y.push(v);
                argmax.push(at);
            }
        }
    }
    (y, argmax)
}

pub fn maxpool_backward(p: &MaxPool2d, argmax: &[usize], dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; p.planes * p.h * p.w];
    let out_pixels = p.out_h * p.out_w;
    for (o, g) in dy.iter().enumerate() {
        dx[(o / out_pixels) * p.h * p.w + argmax[o]] += g;
    }
    dx
}

/// Mean of each plane of `spatial` elements.
pub fn global_avgpool_forward(x: &[f64], spatial: usize) -> Vec<f64> {
    x.chunks(spatial).map(|c| c.iter().sum::<f64>() / spatial as f64).collect()
}

pub fn global_avgpool_backward(dy: &[f64], spatial: usize) -> Vec<f64> {
    dy.iter().flat_map(|g| std::iter::repeat_n(g / spatial as f64, spatial)).collect()
}
