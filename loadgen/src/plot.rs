//! PNG plots with plotters' bitmap backend and no font stack: labels are drawn with a built-in
//! 3x5 pixel font ([`glyph`]), so the plots need no fontconfig/freetype and no system fonts.

use std::path::Path;

use plotters::prelude::*;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;
const LEFT: u32 = 80;
const RIGHT: u32 = 30;
const TOP: u32 = 50;
const BOTTOM: u32 = 50;
/// Pixels per font dot.
const SCALE: i32 = 2;

/// One line of a plot.
pub struct Line<'a> {
    pub label: &'a str,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// Axis description.
pub struct Axes<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Tick positions and their labels.
    pub x_ticks: Vec<(f64, String)>,
    pub y_ticks: Vec<(f64, String)>,
}

/// Draws `lines` into a PNG at `path`.
pub fn line_chart(path: &Path, axes: &Axes<'_>, lines: &[Line<'_>]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let area = root.margin(TOP, BOTTOM, LEFT, RIGHT);
    let (x0, x1) = axes.x_range;
    let (y0, y1) = axes.y_range;
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let grey = RGBColor(225, 225, 225);
    for (y, _) in &axes.y_ticks {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x0, *y), (x1, *y)],
                grey,
            )))
            .map_err(|e| err(&e))?;
    }
    for (x, _) in &axes.x_ticks {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*x, y0), (*x, y1)],
                grey,
            )))
            .map_err(|e| err(&e))?;
    }
    let frame = vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)];
    chart
        .draw_series(std::iter::once(PathElement::new(frame, BLACK)))
        .map_err(|e| err(&e))?;
    for line in lines {
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                line.color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
    }
    let mut pixels: Vec<(i32, i32, RGBColor)> = Vec::new();
    for (y, label) in &axes.y_ticks {
        let (px, py) = chart.backend_coord(&(x0, *y));
        let w = text_width(label);
        text(&mut pixels, px - w - 6, py - 5, label, BLACK);
    }
    for (x, label) in &axes.x_ticks {
        let (px, py) = chart.backend_coord(&(*x, y0));
        text(
            &mut pixels,
            px - text_width(label) / 2,
            py + 8,
            label,
            BLACK,
        );
    }
    let (cx, _) = chart.backend_coord(&((x0 + x1) / 2.0, y0));
    let x_label_w = text_width(axes.x_label);
    text(
        &mut pixels,
        cx - x_label_w / 2,
        HEIGHT as i32 - 20,
        axes.x_label,
        BLACK,
    );
    text(&mut pixels, 8, TOP as i32 - 22, axes.y_label, BLACK);
    text(&mut pixels, LEFT as i32, 10, axes.title, BLACK);
    let mut legend_x = WIDTH as i32 - RIGHT as i32;
    for line in lines.iter().rev() {
        legend_x -= text_width(line.label) + 30;
        for dx in 0..16 {
            for dy in 0..3 {
                pixels.push((legend_x + dx, TOP as i32 - 16 + dy, line.color));
            }
        }
        text(
            &mut pixels,
            legend_x + 20,
            TOP as i32 - 20,
            line.label,
            line.color,
        );
    }
    for (x, y, color) in pixels {
        if x >= 0 && y >= 0 && (x as u32) < WIDTH && (y as u32) < HEIGHT {
            root.draw_pixel((x, y), &color).map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A tick step of 1, 2 or 5 x 10^k giving about `count` ticks over `span`.
pub fn nice_step(span: f64, count: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / count.max(1.0);
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Ticks from 0 to `max` (inclusive-ish) every `step`, labelled with `format`.
pub fn ticks(max: f64, step: f64) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    let mut value = 0.0;
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    for _ in 0..100 {
        if value > max + step * 1e-9 {
            break;
        }
        out.push((value, format!("{value:.decimals$}")));
        value += step;
    }
    out
}

fn text_width(s: &str) -> i32 {
    s.chars().count() as i32 * 4 * SCALE
}

fn text(out: &mut Vec<(i32, i32, RGBColor)>, x: i32, y: i32, s: &str, color: RGBColor) {
    for (i, c) in s.chars().enumerate() {
        let rows = glyph(c);
        let gx = x + i as i32 * 4 * SCALE;
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            out.push((gx + col * SCALE + dx, y + row as i32 * SCALE + dy, color));
                        }
                    }
                }
            }
        }
    }
}

/// A 3x5 glyph: five rows of three bits (MSB = left). Letters are case-insensitive.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        ',' => [0b000, 0b000, 0b000, 0b010, 0b100],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '(' => [0b010, 0b100, 0b100, 0b100, 0b010],
        ')' => [0b010, 0b001, 0b001, 0b001, 0b010],
        '=' => [0b000, 0b111, 0b000, 0b111, 0b000],
        'a' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'b' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'c' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'd' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'e' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'f' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'g' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'h' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'i' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'j' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'k' => [0b101, 0b110, 0b100, 0b110, 0b101],
        'l' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'm' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'n' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'o' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'p' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'r' => [0b110, 0b101, 0b110, 0b101, 0b101],
        's' => [0b011, 0b100, 0b010, 0b001, 0b110],
        't' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'u' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'v' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'w' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'x' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        _ => [0; 5],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_ticks() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
        assert_eq!(nice_step(700.0, 5.0), 200.0);
        let t = ticks(1.0, 0.5);
        assert_eq!(t.len(), 3);
        assert_eq!(t[1].1, "0.5");
    }
}
