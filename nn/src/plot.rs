//! The notebook's pictures as PNG files: the loss history and the train/val accuracy curves
//! (plotters, bitmap backend, text through ab_glyph with an embedded DejaVu Sans, so nothing
//! depends on the system's fonts), and the first-layer filters as a grid (`visualize_grid`,
//! written with `png`).

use std::path::Path;
use std::sync::Once;

use fastlayers::{Float, Tensor};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Error, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped in the crate.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot {
        path: path.into(),
        what: e.to_string(),
    }
}

/// The notebook's two panels: loss per iteration (top), train and val accuracy per check
/// (bottom: the first iteration, then every epoch's end), 900 x 700 pixels.
pub fn training_curves(
    path: &Path,
    title: &str,
    loss: &[f64],
    train_acc: &[f64],
    val_acc: &[f64],
) -> Result<()> {
    register_font();
    let (width, height) = (900u32, 700u32);
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let root = root
            .titled(title, ("sans-serif", 20))
            .map_err(|e| plot_err(path, e))?;
        let (top, bottom) = root.split_vertically(340);
        let finite: Vec<f64> = loss.iter().copied().filter(|v| v.is_finite()).collect();
        let lmax = finite.iter().copied().fold(0.0f64, f64::max).max(1e-3) * 1.05;
        let mut c = ChartBuilder::on(&top)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..(loss.len().max(2) as f64), 0f64..lmax)
            .map_err(|e| plot_err(path, e))?;
        c.configure_mesh()
            .x_desc("iteration")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        c.draw_series(
            loss.iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| Circle::new((i as f64, v), 2, BLUE.filled())),
        )
        .map_err(|e| plot_err(path, e))?;
        let n = train_acc.len().max(val_acc.len()).max(2);
        let mut c = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..((n - 1) as f64), 0f64..1f64)
            .map_err(|e| plot_err(path, e))?;
        c.configure_mesh()
            .x_desc("epoch (accuracy checked at the first iteration and every epoch's end)")
            .y_desc("accuracy")
            .x_labels((n - 1).clamp(2, 20))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (h, color, label) in [(train_acc, BLUE, "train"), (val_acc, RED, "val")] {
            c.draw_series(LineSeries::new(
                h.iter().enumerate().map(|(i, &v)| (i as f64, v)),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            c.draw_series(
                h.iter()
                    .enumerate()
                    .map(|(i, &v)| Circle::new((i as f64, v), 3, color.filled())),
            )
            .map_err(|e| plot_err(path, e))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png(path, width as usize, height as usize, &rgb)
}

fn write_png(path: &Path, w: usize, h: usize, rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    let mut wr = enc.write_header().map_err(|e| plot_err(path, e))?;
    wr.write_image_data(rgb).map_err(|e| plot_err(path, e))?;
    wr.finish().map_err(|e| plot_err(path, e))
}

/// `visualize_grid(W1.transpose(0, 2, 3, 1))`: the (F, C, k, k) filters of a first layer (C = 1
/// or 3) as a grid of ceil(sqrt(F)) columns, each filter scaled to 0..255 on its own min and
/// max, one pixel of padding, every filter pixel drawn `zoom` x `zoom`.
pub fn filter_grid<T: Float>(path: &Path, w: &Tensor<T>, zoom: usize) -> Result<()> {
    let s = w.shape();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || s[0] == 0 {
        return Err(Error::config(
            "W1",
            "filters (F, C, k, k) with C = 1 or 3",
            format!("{s:?}"),
        ));
    }
    let (f, c, kh, kw) = (s[0], s[1], s[2], s[3]);
    let cols = (f as f64).sqrt().ceil() as usize;
    let rows = f.div_ceil(cols);
    let zoom = zoom.max(1);
    let (cw, ch) = (kw * zoom + 1, kh * zoom + 1);
    let (gw, gh) = (cols * cw + 1, rows * ch + 1);
    let mut img = vec![255u8; gw * gh * 3];
    for i in 0..f {
        let fw = &w.data()[i * c * kh * kw..(i + 1) * c * kh * kw];
        let (lo, hi) = fw
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v.to_f()), b.max(v.to_f()))
            });
        let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
        let (x0, y0) = ((i % cols) * cw + 1, (i / cols) * ch + 1);
        for y in 0..kh * zoom {
            for x in 0..kw * zoom {
                for ch_ in 0..3 {
                    let src = if c == 3 { ch_ } else { 0 };
                    let v = fw[src * kh * kw + (y / zoom) * kw + x / zoom].to_f();
                    img[((y0 + y) * gw + x0 + x) * 3 + ch_] =
                        ((v - lo) * scale).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    write_png(path, gw, gh, &img)
}
