//! Reference of [`crate::ops::modulate`].

use crate::ops::modulate::Modulate;

fn factors(m: &Modulate, spatial: Option<&[f64]>, filter: &[f64], k: usize, e: usize) -> (f64, f64) {
    let co = e / m.fan;
    let tap = (e % m.fan) % m.taps;
    let s = spatial.map_or(1.0, |s| 1.0 + s[k * m.taps + tap]);
    (s, 1.0 + filter[k * m.c_out + co])
}

/// One kernel per child of the node.
pub fn forward(m: &Modulate, parent: &[f64], spatial: Option<&[f64]>, filter: &[f64]) -> Vec<Vec<f64>> {
    (m.first_child..m.first_child + m.children)
        .map(|k| {
            (0..parent.len())
                .map(|e| {
                    let (s, f) = factors(m, spatial, filter, k, e);
                    parent[e] * s * f
                })
                .collect()
        })
        .collect()
}

/// Gradients (parent, spatial, filter) from the children's gradients. The attention
/// gradients have all R rows; rows the node does not use are zero.
pub fn backward(
    m: &Modulate,
    parent: &[f64],
    spatial: Option<&[f64]>,
    filter: &[f64],
    dchildren: &[Vec<f64>],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dparent = vec![0.0; parent.len()];
    let mut dspatial = vec![0.0; m.rows * m.taps];
    let mut dfilter = vec![0.0; filter.len()];
    for (c, dchild) in dchildren.iter().enumerate() {
        let k = m.first_child + c;
        for e in 0..parent.len() {
            let (s, f) = factors(m, spatial, filter, k, e);
            dparent[e] += dchild[e] * s * f;
            dspatial[k * m.taps + (e % m.fan) % m.taps] += dchild[e] * parent[e] * f;
            dfilter[k * m.c_out + e / m.fan] += dchild[e] * parent[e] * s;
        }
    }
    (dparent, dspatial, dfilter)
}
