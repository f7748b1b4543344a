//! Image decoding and the two transforms: training (RandomResizedCrop, scale 0.5–1, bicubic, then
//! horizontal flip) and eval (bicubic resize to a square), both normalised with CLIP's mean/std
//! into `[3, S, S]` planes.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// CLIP normalisation, used by BLIP-2's processors.
pub const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Off: training images take the eval transform (resize only), as a feature cache with
    /// `views = 0` stores them.
    pub enabled: bool,
    /// Smallest crop area as a fraction of the image (LAVIS: 0.5).
    pub crop_scale_min: f64,
    /// Random horizontal flip (LAVIS: on). Turn it off when captions say left or right.
    pub hflip: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { enabled: true, crop_scale_min: 0.5, hflip: true }
    }
}

/// Decodes an image, refusing ones whose declared size exceeds `max_pixels` before allocating.
/// Grayscale, 16-bit and CMYK inputs are converted to 8-bit RGB.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a recognised image format".into());
    }
    let (w, h) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| format!("cannot decode: unreadable header: {e}"))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("{w}x{h} exceeds the limit of {max_pixels} pixels"));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    let mut reader = reader;
    reader.limits(limits);
    let img: DynamicImage = reader.decode().map_err(|e| format!("cannot decode: {e}"))?;
    Ok(img.to_rgb8())
}

/// torchvision's RandomResizedCrop box: area fraction in `[scale_min, 1]`, aspect ratio
/// log-uniform in `[3/4, 4/3]`, ten tries, then a centre crop.
fn crop_box(w: u32, h: u32, scale_min: f64, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
    let area = f64::from(w) * f64::from(h);
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale_min..=1.0);
        let ratio = rng.random_range(lo..=hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            return (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch), cw, ch);
        }
    }
    let s = w.min(h);
    ((w - s) / 2, (h - s) / 2, s, s)
}

/// Training transform into normalised CHW planes.
pub fn train_transform(img: &RgbImage, size: u32, aug: &AugmentConfig, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (x, y, cw, ch) = crop_box(img.width(), img.height(), aug.crop_scale_min, rng);
    let crop = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
    let mut out = image::imageops::resize(&crop, size, size, FilterType::CatmullRom);
    if aug.hflip && rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    normalise(&out)
}

/// Eval transform: bicubic resize to `size × size` (a squash, no crop), as BLIP's eval processor.
pub fn eval_transform(img: &RgbImage, size: u32) -> Vec<f32> {
    if img.width() == size && img.height() == size {
        return normalise(img);
    }
    normalise(&image::imageops::resize(img, size, size, FilterType::CatmullRom))
}

fn normalise(img: &RgbImage) -> Vec<f32> {
    let n = (img.width() * img.height()) as usize;
    let mut out = vec![0.0; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = (f32::from(p[c]) / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_stays_inside_and_keeps_enough_area() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..1000 {
            let (x, y, w, h) = crop_box(100, 60, 0.5, &mut rng);
            assert!(x + w <= 100 && y + h <= 60);
            assert!(f64::from(w * h) >= 0.5 * 6000.0 * 0.9, "{w}x{h}");
        }
    }

    #[test]
    fn normalisation_uses_clip_statistics() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128]));
        let v = eval_transform(&img, 2);
        assert!((v[0] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-6);
        assert!((v[4] - (0.0 - MEAN[1]) / STD[1]).abs() < 1e-6);
        assert_eq!(v.len(), 12);
    }

    #[test]
    fn refuses_huge_declared_sizes_and_garbage() {
        let mut png = Vec::new();
        RgbImage::new(300, 300).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(decode(&png, 1000).unwrap_err().contains("exceeds"));
        assert_eq!(decode(&png, 1_000_000).unwrap().dimensions(), (300, 300));
        assert!(decode(b"hello, not an image", 1000).is_err());
        assert!(decode(&png[..png.len() / 2], 1_000_000).is_err());
    }
}
