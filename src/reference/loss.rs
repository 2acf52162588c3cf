//! Reference of [`crate::ops::cross_entropy`].

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let top = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = top + row.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
    row.iter().map(|v| v - lse).collect()
}

/// Mean loss and the number of rows whose first maximum is the label.
pub fn cross_entropy_forward(logits: &[f64], labels: &[usize], classes: usize, smoothing: f64) -> (f64, usize) {
    let mut loss = 0.0;
    let mut correct = 0;
    for (row, &label) in logits.chunks(classes).zip(labels) {
        let logp = log_softmax(row);
        loss += -(1.0 - smoothing) * logp[label] - smoothing * logp.iter().sum::<f64>() / classes as f64;
        let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        correct += (best == label) as usize;
    }
    (loss / labels.len() as f64, correct)
}

/// Gradient of the mean loss to the logits.
pub fn cross_entropy_backward(logits: &[f64], labels: &[usize], classes: usize, smoothing: f64) -> Vec<f64> {
    let batch = labels.len() as f64;
    logits
        .chunks(classes)
        .zip(labels)
        .flat_map(|(row, &label)| {
            log_softmax(row).into_iter().enumerate().map(move |(c, lp)| {
                let target = (1.0 - smoothing) * (c == label) as u8 as f64 + smoothing / classes as f64;
                (lp.exp() - target) / batch
            })
        })
        .collect()
}
