//! Augmentation as torchvision does it, on 8-bit images, producing normalised 3 x res x res
//! f32. Folder images: RandomResizedCrop(res) + horizontal flip for training,
//! Resize(res * 256 / 224) + CenterCrop(res) for validation. Small images (MNIST, CIFAR):
//! resized to res when they differ, then random crop with 4-pixel zero padding + flip for
//! training. Grayscale becomes 3 equal channels.

use rand::Rng;

/// Which transform a split gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    /// RandomResizedCrop(res, scale 0.08..1, ratio 3/4..4/3) + flip.
    FolderTrain,
    /// Resize the shorter side to res * 256 / 224, then CenterCrop(res).
    FolderVal,
    /// Resize to res, RandomCrop(res, padding 4) + flip.
    SmallTrain,
    /// Resize to res.
    SmallVal,
}

/// An 8-bit image, height x width x channels (1 or 3).
pub struct Image<'a> {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub pixels: &'a [u8],
}

/// A crop rectangle in source pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

/// Writes the transformed, normalised image into `out` ([3][res][res]).
pub fn apply(
    aug: Augment,
    img: &Image,
    res: usize,
    mean: [f32; 3],
    std: [f32; 3],
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), 3 * res * res);
    let (w, h) = (img.width as f64, img.height as f64);
    let whole = Rect { x: 0.0, y: 0.0, w, h };
    let (rect, shift, flip) = match aug {
        Augment::FolderTrain => (random_resized_crop(img.width, img.height, rng), (0, 0), rng.random_bool(0.5)),
        Augment::FolderVal => {
            // Resize so the shorter side is res*256/224, then take the centre res x res: the
            // same as cropping the source's centre in the proportion 224/256.
            let resized_short = (res as f64 * 256.0 / 224.0).round();
            let scale = w.min(h) / resized_short;
            let side = res as f64 * scale;
            (Rect { x: (w - side) / 2.0, y: (h - side) / 2.0, w: side, h: side }, (0, 0), false)
        }
        Augment::SmallTrain => {
            let dx = rng.random_range(-4..=4);
            let dy = rng.random_range(-4..=4);
            (whole, (dx, dy), rng.random_bool(0.5))
        }
        Augment::SmallVal => (whole, (0, 0), false),
    };
    let sx = rect.w / res as f64;
    let sy = rect.h / res as f64;
    for oy in 0..res {
        // Padding: pixels shifted in from outside the image are 0 (black), as RandomCrop pads.
        let ry = oy as i64 + shift.1;
        for ox in 0..res {
            let rx = ox as i64 + shift.0;
            let dst = oy * res + if flip { res - 1 - ox } else { ox };
            if ry < 0 || rx < 0 || ry >= res as i64 || rx >= res as i64 {
                for c in 0..3 {
                    out[c * res * res + dst] = (0.0 - mean[c]) / std[c];
                }
                continue;
            }
            // Bilinear sample at the pixel centre (align_corners = false).
            let fx = (rect.x + (rx as f64 + 0.5) * sx - 0.5).clamp(0.0, w - 1.0);
            let fy = (rect.y + (ry as f64 + 0.5) * sy - 0.5).clamp(0.0, h - 1.0);
            let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(img.width - 1), (y0 + 1).min(img.height - 1));
            let (ax, ay) = (fx - x0 as f64, fy - y0 as f64);
            for c in 0..3 {
                let ch = c.min(img.channels - 1);
                let at = |x: usize, y: usize| img.pixels[(y * img.width + x) * img.channels + ch] as f64;
                let top = at(x0, y0) * (1.0 - ax) + at(x1, y0) * ax;
                let bottom = at(x0, y1) * (1.0 - ax) + at(x1, y1) * ax;
                let v = (top * (1.0 - ay) + bottom * ay) / 255.0;
                out[c * res * res + dst] = (v as f32 - mean[c]) / std[c];
            }
        }
    }
}

/// torchvision's RandomResizedCrop.get_params: 10 tries at a random area and aspect ratio,
/// then a centre crop at the nearest allowed ratio.
fn random_resized_crop(width: usize, height: usize, rng: &mut impl Rng) -> Rect {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let x = rng.random_range(0..=width - w);
            let y = rng.random_range(0..=height - h);
            return Rect { x: x as f64, y: y as f64, w: w as f64, h: h as f64 };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < 3.0 / 4.0 {
        (width as f64, (width as f64 / (3.0 / 4.0)).round())
    } else if in_ratio > 4.0 / 3.0 {
        ((height as f64 * 4.0 / 3.0).round(), height as f64)
    } else {
        (width as f64, height as f64)
    };
    Rect { x: ((width as f64 - w) / 2.0).floor(), y: ((height as f64 - h) / 2.0).floor(), w, h }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn small_val_at_native_size_is_the_image_normalised() {
        let sq: Vec<u8> = (0..16).map(|i| (i * 15) as u8).collect();
        let img_sq = Image { height: 4, width: 4, channels: 1, pixels: &sq };
        let mut out = vec![0.0; 3 * 16];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        apply(Augment::SmallVal, &img_sq, 4, [0.5; 3], [0.25; 3], &mut rng, &mut out);
        for c in 0..3 {
            for i in 0..16 {
                let want = (sq[i] as f32 / 255.0 - 0.5) / 0.25;
                assert!((out[c * 16 + i] - want).abs() < 1e-5, "channel {c} pixel {i}");
            }
        }
    }

    #[test]
    fn small_train_shifts_and_flips_with_zero_padding() {
        let sq: Vec<u8> = (0..64).map(|i| i as u8 + 1).collect();
        let img = Image { height: 8, width: 8, channels: 1, pixels: &sq };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut seen_flip = false;
        let mut seen_pad = false;
        for _ in 0..50 {
            let mut out = vec![0.0; 3 * 64];
            apply(Augment::SmallTrain, &img, 8, [0.0; 3], [1.0; 3], &mut rng, &mut out);
            // Every output pixel is either padding (0) or one source pixel, exactly.
            for v in &out[..64] {
                let raw = v * 255.0;
                assert!(raw.abs() < 1e-3 || sq.iter().any(|&s| (s as f32 - raw).abs() < 1e-3), "{raw}");
            }
            seen_pad |= out[..64].contains(&0.0);
            // A flipped row reads right to left: its values fall along the row.
            seen_flip |= out[9] * 255.0 > out[10] * 255.0 + 0.5 && out[10] != 0.0;
        }
        assert!(seen_flip && seen_pad);
    }

    #[test]
    fn folder_val_takes_the_centre() {
        // 448 x 448 -> shorter side 256, centre 224: the source's centre 392 x 392.
        let side = 448;
        let pixels: Vec<u8> = (0..side * side * 3).map(|i| ((i / 3) % side) as u8).collect();
        let img = Image { height: side, width: side, channels: 3, pixels: &pixels };
        let mut out = vec![0.0; 3 * 224 * 224];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        apply(Augment::FolderVal, &img, 224, [0.0; 3], [1.0; 3], &mut rng, &mut out);
        // First column samples x = 28 + 0.5 * 1.75 - 0.5 of the source, whose value is x.
        let want = (28.0 + 0.875 - 0.5) / 255.0;
        assert!((out[0] as f64 - want).abs() < 1e-4, "{} vs {want}", out[0]);
    }

    #[test]
    fn random_resized_crop_stays_inside_the_image() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (w, h) in [(500, 375), (32, 32), (10, 200)] {
            for _ in 0..100 {
                let r = random_resized_crop(w, h, &mut rng);
                assert!(r.x >= 0.0 && r.y >= 0.0 && r.x + r.w <= w as f64 && r.y + r.h <= h as f64, "{r:?}");
                assert!(r.w > 0.0 && r.h > 0.0);
            }
        }
    }
}
