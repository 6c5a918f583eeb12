//! Writes the embedded Fashion-MNIST slice in CIFAR-10's official binary layout
//! (data_batch_1.bin .. data_batch_5.bin with 320 images each, test_batch.bin with 400), so that
//! the real CIFAR-10 loader can be tried on real pixels without the 170 MB download:
//!
//!     cargo run --release -p fastlayers-nn --example write_cifar10 -- /tmp/fashion-as-cifar
//!     fastlayers train --cifar10 /tmp/fashion-as-cifar --cifar10-split 1500,100,400

use fastlayers_nn::data::{self, RawImages};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: write_cifar10 DIR")?;
    let dir = std::path::Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    let raw = data::embedded_raw();
    let part = |r: std::ops::Range<usize>| RawImages {
        labels: raw.labels[r.clone()].to_vec(),
        pixels: raw.pixels[r.start * 3072..r.end * 3072].to_vec(),
    };
    for i in 0..5 {
        data::write_cifar10_batch(
            &dir.join(format!("data_batch_{}.bin", i + 1)),
            &part(i * 320..(i + 1) * 320),
        )?;
    }
    data::write_cifar10_batch(&dir.join("test_batch.bin"), &part(1600..2000))?;
    println!("wrote {} (1600 training, 400 test images)", dir.display());
    Ok(())
}
