//! SVG plots of a run: latency, rate and worker memory over time; throughput and latency against
//! offered load.

use crate::elastic::ElasticReport;
use crate::load::Sample;
use crate::sweep::SweepReport;
use anyhow::Context;
use plotters::prelude::*;
use std::path::Path;

/// One line of a panel.
struct Line {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// One chart of a figure.
struct Panel {
    title: String,
    x_desc: &'static str,
    y_desc: &'static str,
    lines: Vec<Line>,
}

/// Latency percentiles, answer rate and (when sampled) worker RSS per interval of `timeline`.
pub fn timeline(path: &Path, title: &str, timeline: &[Sample]) -> anyhow::Result<()> {
    let series = |f: fn(&Sample) -> f64| timeline.iter().map(|s| (s.t_s, f(s))).collect();
    let mut panels = vec![
        Panel {
            title: format!("{title}: latency per second"),
            x_desc: "time (s)",
            y_desc: "latency (ms)",
            lines: timeline_latency(timeline)
                .into_iter()
                .chain([Line {
                    name: "max",
                    color: RGBColor(150, 150, 150),
                    points: series(|s| s.max_ms),
                }])
                .collect(),
        },
        Panel {
            title: "answers per second".into(),
            x_desc: "time (s)",
            y_desc: "req/s",
            lines: vec![Line {
                name: "answered",
                color: GREEN,
                points: series(|s| s.answered_rps),
            }],
        },
    ];
    let worker = |f: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter_map(|s| Some((s.t_s, f(s)?)))
            .collect()
    };
    let rss = worker(|s| Some(s.worker_rss_bytes? as f64 / (1 << 20) as f64));
    if !rss.is_empty() {
        panels.push(Panel {
            title: "worker resident memory".into(),
            x_desc: "time (s)",
            y_desc: "RSS (MiB)",
            lines: vec![Line {
                name: "RSS",
                color: MAGENTA,
                points: rss,
            }],
        });
    }
    let cpu = worker(|s| s.worker_cpu_cores);
    if !cpu.is_empty() {
        panels.push(Panel {
            title: "worker CPU".into(),
            x_desc: "time (s)",
            y_desc: "cores busy",
            lines: vec![Line {
                name: "CPU",
                color: CYAN,
                points: cpu,
            }],
        });
    }
    draw(path, &panels)
}

/// p50 and p99 latency lines through `points`: (x, p50 ms, p99 ms).
fn latency_lines(points: impl Iterator<Item = (f64, f64, f64)> + Clone) -> Vec<Line> {
    vec![
        Line {
            name: "p50",
            color: BLUE,
            points: points.clone().map(|(x, p50, _)| (x, p50)).collect(),
        },
        Line {
            name: "p99",
            color: RED,
            points: points.map(|(x, _, p99)| (x, p99)).collect(),
        },
    ]
}

/// p50 and p99 latency per interval of `timeline`.
fn timeline_latency(timeline: &[Sample]) -> Vec<Line> {
    latency_lines(timeline.iter().map(|s| (s.t_s, s.p50_ms, s.p99_ms)))
}

/// An elastic run over time: offered and answered rate, queue depth, replicas, latency.
pub fn elastic(path: &Path, report: &ElasticReport) -> anyhow::Result<()> {
    let offered = {
        // Arrivals per second of the trace.
        let mut counts = std::collections::BTreeMap::<u64, f64>::new();
        for &t in &report.arrivals {
            *counts.entry(t as u64).or_default() += 1.0;
        }
        let end = report.ticks.last().map_or(0, |t| t.t_s as u64);
        (0..=end)
            .map(|s| (s as f64, counts.get(&s).copied().unwrap_or(0.0)))
            .collect()
    };
    let timeline = &report.load.timeline;
    let series = |f: fn(&Sample) -> f64| timeline.iter().map(|s| (s.t_s, f(s))).collect();
    let ticks = |f: &dyn Fn(&crate::elastic::Tick) -> f64| -> Vec<(f64, f64)> {
        report.ticks.iter().map(|t| (t.t_s, f(t))).collect()
    };
    let panels = [
        Panel {
            title: format!("{}: requests per second", report.scaled_object),
            x_desc: "time (s)",
            y_desc: "req/s",
            lines: vec![
                Line {
                    name: "offered",
                    color: BLUE,
                    points: offered,
                },
                Line {
                    name: "answered",
                    color: GREEN,
                    points: series(|s| s.answered_rps),
                },
            ],
        },
        Panel {
            title: "queue depth (ready + unacknowledged, as KEDA reads it)".into(),
            x_desc: "time (s)",
            y_desc: "messages",
            lines: vec![Line {
                name: "all triggers",
                color: MAGENTA,
                points: ticks(&|t| t.messages.iter().sum::<u64>() as f64),
            }],
        },
        Panel {
            title: "replicas".into(),
            x_desc: "time (s)",
            y_desc: "replicas",
            lines: vec![
                Line {
                    name: "desired",
                    color: RED,
                    points: ticks(&|t| f64::from(t.replicas)),
                },
                Line {
                    name: "ready",
                    color: CYAN,
                    points: ticks(&|t| t.ready as f64),
                },
            ],
        },
        Panel {
            title: "latency per second".into(),
            x_desc: "time (s)",
            y_desc: "latency (ms)",
            lines: timeline_latency(timeline),
        },
    ];
    draw(path, &panels)
}

/// Answered rate and latency against the offered rate of each step of a sweep.
pub fn sweep(path: &Path, report: &SweepReport) -> anyhow::Result<()> {
    let series = |f: fn(&crate::sweep::Step) -> f64| {
        report
            .steps
            .iter()
            .map(|s| (s.offered_rps, f(s)))
            .collect::<Vec<_>>()
    };
    let offered = series(|s| s.offered_rps);
    let target = offered
        .iter()
        .map(|(x, _)| (*x, report.p99_target_ms))
        .collect();
    draw(
        path,
        &[
            Panel {
                title: format!(
                    "throughput vs offered load (closed-loop max {:.0} req/s)",
                    report.max_rps
                ),
                x_desc: "offered (req/s)",
                y_desc: "answered (req/s)",
                lines: vec![
                    Line {
                        name: "answered",
                        color: GREEN,
                        points: series(|s| s.throughput_rps),
                    },
                    Line {
                        name: "offered",
                        color: RGBColor(150, 150, 150),
                        points: offered,
                    },
                ],
            },
            Panel {
                title: "latency vs offered load".into(),
                x_desc: "offered (req/s)",
                y_desc: "latency (ms)",
                lines: latency_lines(
                    report
                        .steps
                        .iter()
                        .map(|s| (s.offered_rps, s.p50_ms, s.p99_ms)),
                )
                .into_iter()
                .chain([Line {
                    name: "p99 target",
                    color: BLACK,
                    points: target,
                }])
                .collect(),
            },
        ],
    )
}

/// Draws `panels` one above the other into an SVG at `path`.
fn draw(path: &Path, panels: &[Panel]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 320 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let points = || panel.lines.iter().flat_map(|l| &l.points);
        let x_max = points().map(|p| p.0).fold(1e-9, f64::max);
        let y_max = points().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(panel.x_desc)
            .y_desc(panel.y_desc)
            .draw()?;
        for line in &panel.lines {
            let color = line.color;
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(line.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_plot_holds_every_panel_and_series() {
        let timeline: Vec<Sample> = (1..=5)
            .map(|t| Sample {
                t_s: t as f64,
                answered_rps: 100.0 * t as f64,
                p50_ms: 2.0,
                p99_ms: 9.0,
                max_ms: 12.0,
                worker_rss_bytes: Some(50 << 20),
                worker_cpu_cores: Some(0.5),
                worker_open_fds: Some(20),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        super::timeline(&path, "digits", &timeline).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in [
            "digits: latency per second",
            "p99",
            "answers per second",
            "RSS (MiB)",
            "cores busy",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Series (and their legend marks) are the only 2-px lines.
        let series = svg
            .split("<polyline")
            .skip(1)
            .filter(|element| {
                element
                    .split('>')
                    .next()
                    .unwrap()
                    .contains("stroke-width=\"2\"")
            })
            .count();
        assert_eq!(series, 2 * 6, "6 lines and their legend marks");
    }
}
