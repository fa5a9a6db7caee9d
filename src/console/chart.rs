//! Small charts of the last hour as inline SVG, drawn on the server: no
//! script, no image request. One point per minute, oldest on the left; a
//! series is bars or a line (broken where a minute has no figure).
//!
//! SVG inside HTML is foreign content, where `<line>` is not a void
//! element: every shape is written with its closing tag (`{}` in maud).

use maud::{html, Markup};

/// The drawing's size in SVG units (it scales to its box).
/// About the size it is shown at, so that its text reads at its own size.
const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 130.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 6.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 18.0;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    Bars,
    Line,
}

/// One series: a figure per minute (none where there is nothing to show).
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub label: &'static str,
    /// The CSS class that colours it (`bar`, `line-mean`, …).
    pub class: &'static str,
    pub mark: Mark,
    pub values: Vec<Option<f64>>,
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|step| step * magnitude).find(|ceiling| *ceiling >= value).unwrap_or(value)
}

/// A chart of `series` over the last `minutes` minutes, its axis labelled
/// with `format`.
pub(super) fn chart(title: &str, minutes: usize, series: &[Series], format: fn(f64) -> String) -> Markup {
    let peak = series.iter().flat_map(|series| series.values.iter().flatten()).copied().fold(0.0, f64::max);
    let top = nice_ceiling(peak);
    let points = series.iter().map(|series| series.values.len()).max().unwrap_or(0).max(1);
    let step = (WIDTH - LEFT - RIGHT) / points as f64;
    let y = |value: f64| TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (value / top).clamp(0.0, 1.0));
    let x = |index: usize| LEFT + step * index as f64;
    let summary = format!("{title}, last {minutes} minutes: peak {}", format(peak));
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(summary) {
                title { (summary) }
                @for fraction in [0.0, 0.5, 1.0] {
                    line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(top * fraction)) y2=(y(top * fraction)) {}
                }
                @for value in [0.0, top] {
                    text.axis x=(LEFT - 4.0) y=(y(value) + 3.0) text-anchor="end" { (format(value)) }
                }
                text.axis x=(LEFT) y=(HEIGHT - 4.0) { "−" (minutes) " min" }
                text.axis x=(LEFT + (WIDTH - LEFT - RIGHT) / 2.0) y=(HEIGHT - 4.0) text-anchor="middle" { "−" (minutes / 2) " min" }
                text.axis x=(WIDTH - RIGHT) y=(HEIGHT - 4.0) text-anchor="end" { "now" }
                @for series in series {
                    @match series.mark {
                        Mark::Bars => {
                            @for (index, value) in series.values.iter().enumerate() {
                                @if let Some(value) = value.filter(|value| *value > 0.0) {
                                    rect class=(series.class) x=(format!("{:.1}", x(index) + 0.5))
                                        y=(format!("{:.1}", y(value))) width=(format!("{:.1}", (step - 1.0).max(0.5)))
                                        height=(format!("{:.1}", y(0.0) - y(value))) {}
                                }
                            }
                        }
                        Mark::Line => {
                            @for run in runs(&series.values) {
                                polyline class=(series.class) points=(polyline_points(&run, |index| x(index) + step / 2.0, y)) {}
                                // A line of one minute is a dot.
                                @if let [(index, value)] = run.as_slice() {
                                    circle class=(series.class) cx=(format!("{:.1}", x(*index) + step / 2.0))
                                        cy=(format!("{:.1}", y(*value))) r="2" {}
                                }
                            }
                        }
                    }
                }
            }
            @if series.len() > 1 {
                div.legend {
                    @for series in series {
                        span {
                            svg width="16" height="8" aria-hidden="true" {
                                line class=(series.class) x1="0" y1="4" x2="16" y2="4" {}
                            }
                            " " (series.label)
                        }
                    }
                }
            }
        }
    }
}

/// The unbroken runs of a series: (index, value) of consecutive minutes
/// that have a figure.
fn runs(values: &[Option<f64>]) -> Vec<Vec<(usize, f64)>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match value {
            Some(value) => run.push((index, *value)),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

fn polyline_points(run: &[(usize, f64)], x: impl Fn(usize) -> f64, y: impl Fn(f64) -> f64) -> String {
    run.iter().map(|(index, value)| format!("{:.1},{:.1}", x(*index), y(*value))).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_tops_out_at_a_round_figure() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(500.0), 500.0);
    }

    #[test]
    fn lines_break_where_a_minute_has_no_figure() {
        let values = [Some(1.0), Some(2.0), None, None, Some(3.0)];
        assert_eq!(runs(&values), vec![vec![(0, 1.0), (1, 2.0)], vec![(4, 3.0)]]);
    }

    #[test]
    fn a_chart_is_svg_with_its_summary() {
        let series =
            [Series { label: "applied", class: "bar", mark: Mark::Bars, values: vec![Some(2.0), None, Some(4.0)] }];
        let svg = chart("events applied per second", 3, &series, |value| format!("{value:.0}/s")).into_string();
        assert!(svg.contains("<svg") && svg.contains("peak 4/s"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert_eq!(svg.matches("</rect>").count(), 2, "shapes are closed, as SVG in HTML needs: {svg}");
    }
}
