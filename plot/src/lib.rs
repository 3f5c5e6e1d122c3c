//! PNG line charts with plotters' bitmap backend, shared by loadgen's run plots and
//! lethe-sim's figures. Text is drawn in DejaVu Sans, embedded in the binary
//! (plot/assets/DejaVuSans.ttf, its licence beside it) and registered with plotters'
//! `ab_glyph` support: no fontconfig, no system fonts, and no pixel font.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Colours are plotters' (callers name them without depending on plotters).
pub use plotters::style::RGBColor;

/// A categorical palette (matplotlib's first ten), for one colour per series.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 600;
/// Rows above the chart for the title and the subtitle (the run's rate and config).
const HEADER_PX: u32 = 64;
const TITLE_PX: u32 = 22;
const SUBTITLE_PX: u32 = 13;
const AXIS_DESC_PX: u32 = 17;
const TICK_PX: u32 = 14;
const LEGEND_PX: u32 = 15;
/// Labels on the y axis, about (the x axis: [`Axes::x_labels`]).
const Y_LABELS: usize = 8;
/// Labels on an x axis of plain numbers, about.
pub const X_LABELS: usize = 10;
/// Opacity of a min-max band.
const BAND_ALPHA: f64 = 0.18;

/// The embedded font, and the family plotters looks it up by.
const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded font (DejaVu Sans) does not load".to_string())
        })
        .clone()
}

/// One line of a plot, with an optional min-max band around it.
pub struct Line<'a> {
    pub label: &'a str,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    /// `(x, low, high)` in x order: shaded between low and high (e.g. the range over trials).
    pub band: Vec<(f64, f64, f64)>,
    /// Drawn dashed and thin (a reference, such as y = x).
    pub reference: bool,
}

impl<'a> Line<'a> {
    pub fn new(label: &'a str, color: RGBColor, points: Vec<(f64, f64)>) -> Line<'a> {
        Line {
            label,
            color,
            points,
            band: Vec::new(),
            reference: false,
        }
    }
}

/// What the axes and the header say.
pub struct Axes<'a> {
    pub title: String,
    /// The run's rate and config, under the title.
    pub subtitle: String,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// How an x tick is labelled (`None`: the number), and about how many there are.
    pub x_format: Option<fn(&f64) -> String>,
    pub x_labels: usize,
}

/// A tick label: whole numbers bare, small ones with two decimals.
pub fn number(v: &f64) -> String {
    let magnitude = v.abs();
    if magnitude >= 100.0 || *v == v.round() {
        format!("{v:.0}")
    } else if magnitude >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `lines` into a PNG of [`WIDTH`] x [`HEIGHT`] at `path`.
pub fn line_chart(path: &Path, axes: &Axes<'_>, lines: &[Line<'_>]) -> Result<(), String> {
    font()?;
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (header, body) = root.split_vertically(HEADER_PX);
    header
        .draw(&Text::new(
            axes.title.as_str(),
            (16, 10),
            (FAMILY, TITLE_PX).into_font().color(&BLACK),
        ))
        .map_err(|e| err(&e))?;
    header
        .draw(&Text::new(
            axes.subtitle.as_str(),
            (16, 40),
            (FAMILY, SUBTITLE_PX)
                .into_font()
                .color(&RGBColor(70, 70, 70)),
        ))
        .map_err(|e| err(&e))?;
    let (x0, x1) = axes.x_range;
    let (y0, y1) = axes.y_range;
    let mut chart = ChartBuilder::on(&body)
        .margin(16)
        .margin_right(40)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let y_format = number;
    let x_format = axes.x_format.unwrap_or(number);
    chart
        .configure_mesh()
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_labels(axes.x_labels)
        .y_labels(Y_LABELS)
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .x_desc(axes.x_label)
        .y_desc(axes.y_label)
        .label_style((FAMILY, TICK_PX))
        .axis_desc_style((FAMILY, AXIS_DESC_PX))
        .draw()
        .map_err(|e| err(&e))?;
    for line in lines.iter().filter(|l| l.band.len() >= 2) {
        let mut outline: Vec<(f64, f64)> = line.band.iter().map(|(x, _, hi)| (*x, *hi)).collect();
        outline.extend(line.band.iter().rev().map(|(x, lo, _)| (*x, *lo)));
        chart
            .draw_series(std::iter::once(Polygon::new(
                outline,
                line.color.mix(BAND_ALPHA).filled(),
            )))
            .map_err(|e| err(&e))?;
    }
    for line in lines {
        let color = line.color;
        let drawn = if line.reference {
            chart.draw_series(DashedLineSeries::new(
                line.points.iter().copied(),
                8,
                6,
                color.stroke_width(1),
            ))
        } else {
            chart.draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
        };
        drawn
            .map_err(|e| err(&e))?
            .label(line.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        if !line.reference && line.points.len() <= 40 {
            // Few points (a sweep's steps): mark each, so that a step is seen as measured.
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|p| Circle::new(*p, 3, color.filled())),
                )
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FAMILY, LEGEND_PX))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The top of a y axis from 0 holding `top` with some room (at least `floor`).
pub fn y_max(top: f64, floor: f64) -> f64 {
    if top.is_finite() && top > floor {
        top * 1.1
    } else {
        floor
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_axis_tops() {
        assert_eq!(number(&250.0), "250");
        assert_eq!(number(&2.5), "2.5");
        assert_eq!(number(&0.25), "0.25");
        assert_eq!(number(&3.0), "3");
        assert_eq!(y_max(10.0, 1.0), 11.0);
        assert_eq!(y_max(0.0, 1.0), 1.0);
        assert_eq!(y_max(f64::NAN, 1.0), 1.0);
    }

    #[test]
    fn the_embedded_font_loads() {
        font().unwrap();
    }
}
