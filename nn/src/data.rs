//! Datasets as the notebooks prepare them: CIFAR-10 from its official binary files, and an
//! embedded slice of Fashion-MNIST that needs no download.
//!
//! Both come out as `get_CIFAR10_data` returns CIFAR-10: pixel values 0..255 as floats, the
//! mean image of the training split subtracted from every split, NCHW (N, 3, 32, 32).

use std::path::Path;

use fastlayers::{Float, Tensor};

use crate::{Error, Result};

/// Bytes of one CIFAR-10 record: the label, then 1024 red, 1024 green, 1024 blue pixels.
pub const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10's class names.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
];

/// Fashion-MNIST's class names.
pub const FASHION_CLASSES: [&str; 10] = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

/// Train, validation and test splits.
#[derive(Clone, Debug)]
pub struct Dataset<T> {
    /// Where it came from.
    pub name: String,
    /// (N, 3, 32, 32), mean image subtracted.
    pub x_train: Tensor<T>,
    /// Labels 0..10.
    pub y_train: Vec<usize>,
    /// Validation images.
    pub x_val: Tensor<T>,
    /// Validation labels.
    pub y_val: Vec<usize>,
    /// Test images.
    pub x_test: Tensor<T>,
    /// Test labels.
    pub y_test: Vec<usize>,
    /// The mean training image (3, 32, 32) that was subtracted.
    pub mean_image: Vec<f64>,
    /// The class names.
    pub classes: Vec<String>,
}

/// Raw images: labels and 3x32x32 u8 pixels in CIFAR-10's plane order.
#[derive(Clone, Debug, PartialEq)]
pub struct RawImages {
    /// One label per image.
    pub labels: Vec<u8>,
    /// 3072 bytes per image.
    pub pixels: Vec<u8>,
}

impl RawImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn extend(&mut self, other: RawImages) {
        self.labels.extend(other.labels);
        self.pixels.extend(other.pixels);
    }
    fn range(&self, r: std::ops::Range<usize>) -> RawImages {
        RawImages {
            labels: self.labels[r.clone()].to_vec(),
            pixels: self.pixels[r.start * 3072..r.end * 3072].to_vec(),
        }
    }
}

/// Parses CIFAR-10 binary records from `bytes` (read from `path`, named in errors): a whole
/// number of 3073-byte records (the official files hold 10,000), every label byte in 0..10.
pub fn parse_cifar10_batch(bytes: &[u8], path: &Path) -> Result<RawImages> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(Error::Data {
            path: path.into(),
            what: format!(
                "expected a whole number of {CIFAR_RECORD}-byte records (label + 3x32x32 pixels; the official files are 30730000 bytes), found {} bytes",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / CIFAR_RECORD;
    let mut raw = RawImages {
        labels: Vec::with_capacity(n),
        pixels: Vec::with_capacity(n * 3072),
    };
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(Error::Data {
                path: path.into(),
                what: format!(
                    "record {i} (byte offset {}): label byte {} is not a class in 0..10",
                    i * CIFAR_RECORD,
                    rec[0]
                ),
            });
        }
        raw.labels.push(rec[0]);
        raw.pixels.extend_from_slice(&rec[1..]);
    }
    Ok(raw)
}

fn read_batch(path: &Path) -> Result<RawImages> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_cifar10_batch(&bytes, path)
}

/// Writes `raw` as one CIFAR-10 binary batch file.
pub fn write_cifar10_batch(path: &Path, raw: &RawImages) -> Result<()> {
    let mut out = Vec::with_capacity(raw.len() * CIFAR_RECORD);
    for (i, &l) in raw.labels.iter().enumerate() {
        out.push(l);
        out.extend_from_slice(&raw.pixels[i * 3072..(i + 1) * 3072]);
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}

/// How many images each split takes (the notebook's 49000 / 1000 / 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Training images, the first of the training files.
    pub num_training: usize,
    /// Validation images, those right after them.
    pub num_validation: usize,
    /// Test images, the first of test_batch.bin.
    pub num_test: usize,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            num_training: 49000,
            num_validation: 1000,
            num_test: 1000,
        }
    }
}

/// `get_CIFAR10_data(num_training, num_validation, num_test)` from `dir`, which holds the
/// official binary distribution's data_batch_1.bin .. data_batch_5.bin and test_batch.bin
/// (the cifar-10-batches-bin directory of cifar-10-binary.tar.gz).
pub fn load_cifar10<T: Float>(dir: &Path, split: Split) -> Result<Dataset<T>> {
    if !dir.is_dir() {
        return Err(Error::Data {
            path: dir.into(),
            what: "not a directory; expected CIFAR-10's binary distribution (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)".into(),
        });
    }
    let mut train = RawImages {
        labels: Vec::new(),
        pixels: Vec::new(),
    };
    for i in 1..=5 {
        train.extend(read_batch(&dir.join(format!("data_batch_{i}.bin")))?);
    }
    let test = read_batch(&dir.join("test_batch.bin"))?;
    let (ntr, nva) = (split.num_training, split.num_validation);
    if ntr == 0 || ntr + nva > train.len() || split.num_test > test.len() {
        return Err(Error::config(
            "split",
            format!(
                "at least one training image, training + validation <= {} training images and test <= {} test images",
                train.len(),
                test.len()
            ),
            format!("{split:?}"),
        ));
    }
    Ok(preprocess(
        format!("CIFAR-10 ({})", dir.display()),
        &train.range(0..ntr),
        &train.range(ntr..ntr + nva),
        &test.range(0..split.num_test),
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    ))
}

/// Floats, the training split's mean image (accumulated in f64) subtracted from every split.
fn preprocess<T: Float>(
    name: String,
    train: &RawImages,
    val: &RawImages,
    test: &RawImages,
    classes: Vec<String>,
) -> Dataset<T> {
    let mut mean = vec![0.0f64; 3072];
    for img in train.pixels.chunks_exact(3072) {
        for (m, &p) in mean.iter_mut().zip(img) {
            *m += f64::from(p);
        }
    }
    let n = train.len().max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    let conv = |r: &RawImages| -> (Tensor<T>, Vec<usize>) {
        let x = Tensor::from_fn(&[r.len(), 3, 32, 32], |i| {
            T::from_f(f64::from(r.pixels[i]) - mean[i % 3072])
        })
        .expect("a dataset of at most a few hundred MB");
        (x, r.labels.iter().map(|&l| usize::from(l)).collect())
    };
    let (x_train, y_train) = conv(train);
    let (x_val, y_val) = conv(val);
    let (x_test, y_test) = conv(test);
    Dataset {
        name,
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        mean_image: mean,
        classes,
    }
}

static FASHION: &[u8] = include_bytes!("../data/fashion2000.bin");

/// The embedded images: the first 2,000 images of the Fashion-MNIST test set (MIT licence,
/// Zalando Research; written by scripts/make_fashion_slice.py), each 28x28 grey image
/// centred in a 32x32 frame of zeros and repeated over the 3 channels, so that the
/// notebook's models run on it with their CIFAR-10 defaults.
pub fn embedded_raw() -> RawImages {
    const REC: usize = 1 + 28 * 28;
    let n = FASHION.len() / REC;
    let mut raw = RawImages {
        labels: Vec::with_capacity(n),
        pixels: vec![0; n * 3072],
    };
    for (i, rec) in FASHION.chunks_exact(REC).enumerate() {
        raw.labels.push(rec[0]);
        let img = &mut raw.pixels[i * 3072..(i + 1) * 3072];
        for c in 0..3 {
            for r in 0..28 {
                let dst = c * 1024 + (r + 2) * 32 + 2;
                img[dst..dst + 28].copy_from_slice(&rec[1 + r * 28..1 + (r + 1) * 28]);
            }
        }
    }
    raw
}

/// The embedded dataset, split 1600 / 200 / 200 in file order and preprocessed as CIFAR-10.
pub fn embedded<T: Float>() -> Dataset<T> {
    let raw = embedded_raw();
    preprocess(
        "embedded Fashion-MNIST slice (2,000 test images, 32x32x3)".into(),
        &raw.range(0..1600),
        &raw.range(1600..1800),
        &raw.range(1800..2000),
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
    )
}

impl<T: Float> Dataset<T> {
    /// The first `n` training samples (the notebook's small_data), validation unchanged.
    pub fn small(&self, n: usize) -> Dataset<T> {
        let n = n.min(self.y_train.len());
        let s = self.x_train.len() / self.y_train.len().max(1);
        let mut shape = self.x_train.shape().to_vec();
        shape[0] = n;
        Dataset {
            x_train: Tensor::new(self.x_train.data()[..n * s].to_vec(), &shape)
                .expect("a prefix of the training set"),
            y_train: self.y_train[..n].to_vec(),
            ..self.clone()
        }
    }
}
