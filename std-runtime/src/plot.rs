//! Training curves as an SVG image: loss per epoch (training and validation) beside the metric
//! (accuracy or RMSE).

use std::path::Path;

use plotters::prelude::*;

use crate::data::Task;
use crate::error::{Error, Result};
use crate::train::EpochLog;

type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    epochs: usize,
    series: &[Series<'_>],
) -> std::result::Result<(), String> {
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), y| {
        (l.min(y), h.max(y))
    });
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .margin_right(25)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(1f64..(epochs.max(2) as f64), (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, points, color) in series {
        if points.is_empty() {
            continue;
        }
        let c = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The curves of `history` as SVG text.
///
/// # Errors
/// `Invalid` when there is nothing to plot or drawing fails.
pub fn render(history: &[EpochLog], task: Task) -> Result<String> {
    if history.is_empty() {
        return Err(Error::invalid("no epochs to plot"));
    }
    let epochs = history.last().map_or(1, |h| h.epoch);
    let pts = |f: &dyn Fn(&EpochLog) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|h| f(h).map(|v| (h.epoch as f64, v)))
            .collect()
    };
    let (metric, scale) = match task {
        Task::Classification => ("accuracy (%)", 100.0),
        Task::Regression => ("RMSE", 1.0),
    };
    let loss = [
        ("training", pts(&|h| Some(h.train_loss)), BLUE),
        ("validation", pts(&|h| h.val_loss), RED),
    ];
    let met = [
        ("training", pts(&|h| Some(h.train_metric * scale)), BLUE),
        ("validation", pts(&|h| h.val_metric.map(|v| v * scale)), RED),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 420)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| Error::invalid(format!("plot: {e}")))?;
        let areas = root.split_evenly((1, 2));
        if let [left, right] = areas.as_slice() {
            panel(left, "loss", epochs, &loss).map_err(|e| Error::invalid(format!("plot: {e}")))?;
            panel(right, metric, epochs, &met).map_err(|e| Error::invalid(format!("plot: {e}")))?;
        }
        root.present()
            .map_err(|e| Error::invalid(format!("plot: {e}")))?;
    }
    Ok(svg)
}

/// Writes the curves of `history` to `path` as SVG.
///
/// # Errors
/// As [`render`]; an `Io` error.
pub fn save(path: &Path, history: &[EpochLog], task: Task) -> Result<()> {
    let svg = render(history, task)?;
    crate::checkpoint::write_atomic(path, svg.as_bytes())
}
