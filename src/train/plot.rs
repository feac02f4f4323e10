//! Training curves as a PNG image: loss and accuracy per epoch, the phase boundary marked.
//!
//! Two panels side by side, like the reference notebook's matplotlib figure (docs/reference_experiment.md): "loss" on the left and "accuracy" on
//! the right, epochs 1..=n on the x axis (n is the longest series), each series a 2 px line with its points
//! marked, in matplotlib's default colours. Missing (`None`) and non-finite values are skipped and the line joins
//! the points on either side. Phase 2 is marked by a dashed grey line between its first epoch and the one before.
//! The loss axis fits the data (padded 5%, and widened when all values are equal). The accuracy axis runs from
//! its lowest value rounded down to a tenth (at most 0.9) up to 1, when all values lie in 0..=1; otherwise it fits
//! the data like the loss axis. Legends sit in a row under each panel title, never over the curves.
use font8x8::{UnicodeFonts, BASIC_FONTS};
use image::{Rgb, RgbImage};

/// One line: its legend label and a value per epoch (`None` where there is none).
pub struct Series<'a> {
    pub label: &'a str,
    pub values: &'a [Option<f64>],
}

/// What to draw: a title over both panels, the phase boundary, and the series of each panel.
pub struct Curves<'a> {
    pub title: &'a str,
    /// Epoch index (0-based, across phases) at which phase 2 starts, if any.
    pub phase2_start: Option<usize>,
    pub loss: Vec<Series<'a>>,
    pub accuracy: Vec<Series<'a>>,
}

/// matplotlib's "tab10" colours, in its order.
const COLOURS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const FRAME: Rgb<u8> = Rgb([80, 80, 80]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
const BOUNDARY: Rgb<u8> = Rgb([120, 120, 120]);
const PHASE2_LABEL: &str = "phase 2 starts";

/// Renders to an RGB image (width × height, e.g. 1200 × 480; each at least 1).
pub fn render(curves: &Curves, width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width.max(1), height.max(1), WHITE);
    let (w, h) = (img.width() as i32, img.height() as i32);
    let epochs = curves.loss.iter().chain(&curves.accuracy).map(|s| s.values.len()).max().unwrap_or(0);
    let mut top = 8;
    if !curves.title.is_empty() {
        text(&mut img, curves.title, (w - text_width(curves.title, 2)) / 2, top, 2, INK);
        top += 26;
    }
    let boundary = curves.phase2_start.filter(|&p| p > 0 && p < epochs);
    let panels = [("loss", &curves.loss, false), ("accuracy", &curves.accuracy, true)];
    let half = w / 2;
    let legends: Vec<_> = panels
        .iter()
        .map(|(_, series, _)| {
            let mut items: Vec<LegendItem> =
                series.iter().enumerate().map(|(i, s)| (s.label, Some(Rgb(COLOURS[i % COLOURS.len()])))).collect();
            if boundary.is_some() {
                items.push((PHASE2_LABEL, None));
            }
            legend_rows(&items, half - 24)
        })
        .collect();
    let legend_rows_max = legends.iter().map(|rows| rows.len()).max().unwrap_or(0) as i32;
    let plot_top = top + 26 + legend_rows_max * 14 + 6;
    let plot_bottom = h - 40;
    let x_axis = Axis { lo: 0.5, hi: epochs.max(1) as f64 + 0.5 };
    for (i, ((name, series, is_accuracy), legend)) in panels.iter().zip(&legends).enumerate() {
        let x0 = i as i32 * half;
        text(&mut img, name, x0 + (half - text_width(name, 2)) / 2, top, 2, INK);
        let mut y = top + 26;
        for row in legend {
            let row_width: i32 = row.iter().map(|(label, _)| legend_item_width(label)).sum::<i32>() - 14;
            let mut x = x0 + (half - row_width) / 2;
            for &(label, colour) in row {
                match colour {
                    Some(c) => {
                        line(&mut img, (x as f64, y as f64 + 3.5), (x as f64 + 20.0, y as f64 + 3.5), c);
                        marker(&mut img, x + 10, y + 3, c);
                    }
                    None => dashed_hline(&mut img, x, x + 20, y + 3),
                }
                text(&mut img, label, x + 26, y, 1, INK);
                x += legend_item_width(label);
            }
            y += 14;
        }
        let values = series.iter().flat_map(|s| s.values.iter().flatten().copied().filter(|v| v.is_finite()));
        let y_axis = if *is_accuracy { accuracy_axis(values) } else { fitted_axis(values) };
        // `left` depends on the tick labels' width: panel() sets it.
        let area = Area { x_axis, y_axis, left: 0, right: x0 + half - 18, top: plot_top, bottom: plot_bottom };
        panel(&mut img, series, boundary, area, x0);
    }
    img
}

/// Renders and encodes as PNG bytes.
pub fn png(curves: &Curves, width: u32, height: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    render(curves, width, height)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding a PNG into memory cannot fail for a non-empty image");
    out.into_inner()
}

/// A confusion matrix as a heat map (PNG): row `i` is true class `i`, column `j` predicted class
/// `j`; each cell's shade is its share of the row, from white (none) to matplotlib's blue (all).
/// Cells are 2–24 px (the whole matrix within ~800 px); below a title and the axes' names.
pub fn confusion_png(title: &str, matrix: &[Vec<u32>]) -> Vec<u8> {
    let k = matrix.len().max(1) as u32;
    let cell = (800 / k).clamp(2, 24);
    let (left, top) = (16u32, 56u32);
    let side = k * cell;
    let width = (left * 2 + side).max(text_width(title, 2) as u32 + 2 * left);
    let mut img = RgbImage::from_pixel(width, top + side + 16, Rgb([255, 255, 255]));
    text(&mut img, title, left as i32, 8, 2, Rgb([0, 0, 0]));
    text(&mut img, "rows: true class, columns: predicted class", left as i32, 32, 1, Rgb([80, 80, 80]));
    let [r, g, b] = COLOURS[0];
    for (i, row) in matrix.iter().enumerate() {
        let total: u32 = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { f64::from(count) / f64::from(total) };
            let mix = |c: u8| (255.0 - share * (255.0 - f64::from(c))).round() as u8;
            let colour = Rgb([mix(r), mix(g), mix(b)]);
            let (x0, y0) = (left + j as u32 * cell, top + i as u32 * cell);
            for dy in 0..cell {
                for dx in 0..cell {
                    img.put_pixel(x0 + dx, y0 + dy, colour);
                }
            }
        }
    }
    // A frame around the matrix.
    let (l, t, rgt, btm) = (left as i32 - 1, top as i32 - 1, (left + side) as i32, (top + side) as i32);
    hline(&mut img, l, rgt, t, Rgb([0, 0, 0]));
    hline(&mut img, l, rgt, btm, Rgb([0, 0, 0]));
    vline(&mut img, l, t, btm, Rgb([0, 0, 0]));
    vline(&mut img, rgt, t, btm, Rgb([0, 0, 0]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encoding a PNG into memory cannot fail");
    out.into_inner()
}

#[derive(Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
}

/// A plot area in pixels and the value ranges it shows.
#[derive(Clone, Copy)]
struct Area {
    x_axis: Axis,
    y_axis: Axis,
    left: i32,
    right: i32,
    top: i32,
    bottom: i32,
}

impl Area {
    fn px(&self, x: f64, y: f64) -> (f64, f64) {
        let (xa, ya) = (self.x_axis, self.y_axis);
        let px = self.left as f64 + (x - xa.lo) / (xa.hi - xa.lo) * (self.right - self.left) as f64;
        let py = self.bottom as f64 - (y - ya.lo) / (ya.hi - ya.lo) * (self.bottom - self.top) as f64;
        (px, py)
    }
}

/// Draws one panel's axes, ticks, grid, phase boundary and curves; `area.left` is set from the tick labels.
fn panel(img: &mut RgbImage, series: &[Series], boundary: Option<usize>, mut area: Area, x0: i32) {
    let (y_ticks, y_decimals) = ticks(area.y_axis.lo, area.y_axis.hi, 6);
    let y_labels: Vec<String> = y_ticks.iter().map(|&v| format_tick(v, y_decimals)).collect();
    let label_width = y_labels.iter().map(|l| text_width(l, 1)).max().unwrap_or(0);
    area.left = x0 + 14 + label_width + 8;
    if area.right - area.left < 20 || area.bottom - area.top < 20 {
        return;
    }
    for (&v, label) in y_ticks.iter().zip(&y_labels) {
        let y = area.px(0.0, v).1.round() as i32;
        hline(img, area.left, area.right, y, GRID);
        hline(img, area.left - 4, area.left, y, FRAME);
        text(img, label, area.left - 7 - text_width(label, 1), y - 3, 1, INK);
    }
    let n = area.x_axis.hi - 0.5;
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        .into_iter()
        .find(|s| n / s <= 12.0)
        .unwrap_or((n / 10.0).ceil());
    let mut epoch = step;
    while epoch <= n {
        let x = area.px(epoch, 0.0).0.round() as i32;
        vline(img, x, area.top, area.bottom, GRID);
        vline(img, x, area.bottom, area.bottom + 4, FRAME);
        let label = format!("{epoch}");
        text(img, &label, x - text_width(&label, 1) / 2 + 1, area.bottom + 8, 1, INK);
        epoch += step;
    }
    if step > 1.0 {
        let x = area.px(1.0, 0.0).0.round() as i32;
        vline(img, x, area.bottom, area.bottom + 4, FRAME);
    }
    let (mid, bottom) = ((area.left + area.right) / 2, area.bottom + 24);
    text(img, "epoch", mid - text_width("epoch", 1) / 2, bottom, 1, INK);
    if let Some(p) = boundary {
        let x = area.px(p as f64 + 0.5, 0.0).0.round() as i32;
        let mut y = area.top;
        while y < area.bottom {
            for dx in 0..2 {
                vline(img, x + dx, y, (y + 6).min(area.bottom), BOUNDARY);
            }
            y += 10;
        }
    }
    for (i, s) in series.iter().enumerate() {
        let colour = Rgb(COLOURS[i % COLOURS.len()]);
        let points: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(e, v)| v.filter(|v| v.is_finite()).map(|v| area.px(e as f64 + 1.0, v)))
            .collect();
        for pair in points.windows(2) {
            line(img, pair[0], pair[1], colour);
        }
        for &(x, y) in &points {
            marker(img, x.round() as i32, y.round() as i32, colour);
        }
    }
    for (x, y0, y1) in [(area.left, area.top, area.bottom), (area.right, area.top, area.bottom)] {
        vline(img, x, y0, y1, FRAME);
    }
    hline(img, area.left, area.right, area.top, FRAME);
    hline(img, area.left, area.right, area.bottom, FRAME);
}

/// A legend entry: its label and its colour, or `None` for the dashed phase boundary.
type LegendItem<'a> = (&'a str, Option<Rgb<u8>>);

/// Lays legend items out in rows that fit `width` pixels.
fn legend_rows<'a>(items: &[LegendItem<'a>], width: i32) -> Vec<Vec<LegendItem<'a>>> {
    let mut rows: Vec<Vec<_>> = Vec::new();
    let mut used = 0;
    for &item in items {
        let w = legend_item_width(item.0);
        match rows.last_mut() {
            Some(row) if used + w - 14 <= width => row.push(item),
            _ => {
                rows.push(vec![item]);
                used = 0;
            }
        }
        used += w;
    }
    rows
}

fn legend_item_width(label: &str) -> i32 {
    26 + text_width(label, 1) + 14
}

/// The y axis for loss-like values: their range, widened when flat, plus 5% either side.
fn fitted_axis(values: impl Iterator<Item = f64>) -> Axis {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return Axis { lo: 0.0, hi: 1.0 };
    }
    let (lo, hi) = if hi - lo <= 1e-9 * hi.abs().max(1e-300) {
        let pad = (hi.abs() * 0.1).max(1e-3);
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    };
    let margin = (hi - lo) * 0.05;
    Axis { lo: lo - margin, hi: hi + margin }
}

/// The y axis for accuracy: [lowest value rounded down to a tenth (at most 0.9), 1] when all values are in 0..=1.
fn accuracy_axis(values: impl Iterator<Item = f64> + Clone) -> Axis {
    if values.clone().any(|v| !(0.0..=1.0).contains(&v)) {
        return fitted_axis(values);
    }
    let lo = ((values.fold(1.0f64, f64::min) * 10.0).floor() / 10.0).min(0.9);
    let pad = (1.0 - lo) * 0.05;
    Axis { lo: lo - pad, hi: 1.0 + pad }
}

/// "Nice" tick values (1, 2, 2.5 or 5 times a power of ten apart) within lo..=hi, and the decimals to print.
fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / target as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return (vec![], 0);
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let mantissa = [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().find(|&m| raw / magnitude <= m * 1.0000001).unwrap_or(10.0);
    let step = mantissa * magnitude;
    let first = (lo / step).ceil();
    let values: Vec<f64> = (0..50).map(|k| (first + k as f64) * step).take_while(|&v| v <= hi + step * 1e-9).collect();
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize + usize::from(mantissa == 2.5) };
    (values, decimals.min(12))
}

fn format_tick(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 8 * scale
}

/// Draws `s` with its top-left corner at (x, y), `scale` pixels per font pixel.
fn text(img: &mut RgbImage, s: &str, x: i32, y: i32, scale: i32, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let glyph = BASIC_FONTS.get(c).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        let cx = x + i as i32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    for (dx, dy) in (0..scale).flat_map(|dx| (0..scale).map(move |dy| (dx, dy))) {
                        put(img, cx + col * scale + dx, y + row as i32 * scale + dy, colour);
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

fn hline(img: &mut RgbImage, x0: i32, x1: i32, y: i32, colour: Rgb<u8>) {
    (x0.max(-1)..=x1.min(img.width() as i32)).for_each(|x| put(img, x, y, colour));
}

fn vline(img: &mut RgbImage, x: i32, y0: i32, y1: i32, colour: Rgb<u8>) {
    (y0.max(-1)..=y1.min(img.height() as i32)).for_each(|y| put(img, x, y, colour));
}

/// The legend sample of the phase boundary: a short horizontal dashed line.
fn dashed_hline(img: &mut RgbImage, x0: i32, x1: i32, y: i32) {
    for x in (x0..x1).filter(|x| (x - x0) % 10 < 6) {
        put(img, x, y, BOUNDARY);
        put(img, x, y + 1, BOUNDARY);
    }
}

/// A 2 px wide straight line between two points.
fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().clamp(1.0, 20_000.0) as i32;
    for k in 0..=steps {
        let t = k as f64 / steps as f64;
        let (x, y) = ((x0 + (x1 - x0) * t - 0.5).round() as i32, (y0 + (y1 - y0) * t - 0.5).round() as i32);
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x + dx, y + dy, colour);
        }
    }
}

/// A filled disc of radius 3 marking a point.
fn marker(img: &mut RgbImage, cx: i32, cy: i32, colour: Rgb<u8>) {
    for dy in -3..=3 {
        for dx in -3..=3 {
            if dx * dx + dy * dy <= 10 {
                put(img, cx + dx, cy + dy, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(img: &RgbImage, c: [u8; 3]) -> bool {
        img.pixels().any(|p| p.0 == c)
    }

    fn curves<'a>(loss: &'a [Option<f64>], acc: &'a [Option<f64>], phase2: Option<usize>) -> Curves<'a> {
        Curves {
            title: "test run",
            phase2_start: phase2,
            loss: vec![Series { label: "train loss", values: loss }, Series { label: "val loss", values: loss }],
            accuracy: vec![Series { label: "val accuracy", values: acc }],
        }
    }

    #[test]
    fn empty_series_draw_axes_only() {
        let img = render(&curves(&[], &[], Some(3)), 1200, 480);
        assert!(has(&img, FRAME.0) && has(&img, COLOURS[0]) && !has(&img, BOUNDARY.0), "axes and legend only");
        let img = render(&Curves { title: "", phase2_start: None, loss: vec![], accuracy: vec![] }, 1200, 480);
        assert!(has(&img, FRAME.0) && has(&img, INK.0) && !has(&img, COLOURS[0]));
    }

    #[test]
    fn one_epoch_and_flat_values() {
        let img = render(&curves(&[Some(0.7)], &[Some(1.0)], None), 640, 300);
        assert!(has(&img, COLOURS[0]) && has(&img, COLOURS[1]));
        let flat = [Some(2.0); 5];
        assert!(has(&render(&curves(&flat, &flat, Some(2)), 640, 300), COLOURS[1]));
    }

    #[test]
    fn full_run_with_boundary_round_trips_as_png() {
        let loss: Vec<_> = (0..24).map(|i| if i == 5 { None } else { Some(3.0 / (i as f64 + 1.0)) }).collect();
        let acc: Vec<_> = (0..24).map(|i| Some(if i == 7 { f64::NAN } else { 0.3 + i as f64 / 40.0 })).collect();
        let bytes = png(&curves(&loss, &acc, Some(10)), 1200, 480);
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1200, 480));
        for c in [COLOURS[0], COLOURS[1], BOUNDARY.0, INK.0] {
            assert!(has(&img, c), "{c:?} missing");
        }
        assert!(img.pixels().any(|p| p.0 != [255; 3]));
    }

    #[test]
    fn odd_values_and_sizes_do_not_panic() {
        let odd = [Some(f64::INFINITY), Some(-1e300), Some(1e300), None, Some(f64::NAN), Some(-5.0), Some(250.0)];
        for (w, h) in [(0, 0), (1, 1), (40, 30), (200, 100), (3000, 200)] {
            let img = render(&curves(&odd, &odd, Some(99)), w, h);
            assert_eq!(img.dimensions(), (w.max(1), h.max(1)));
        }
        let (t, d) = ticks(0.0, 1.0, 6);
        assert_eq!((t.len(), d), (6, 1));
        assert_eq!(format_tick(-0.0, 2), "0.00");
    }
}
