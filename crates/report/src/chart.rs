//! A plot's title, axes and range, drawn by the shared SVG line plot.

use mosr_artifacts::svg::{LinePlot, Series};

/// Title, axes and y range of a plot; rendered with the shared [`LinePlot`].
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_range: Option<(f64, f64)>,
}

impl Chart {
    pub fn render(self, series: Vec<Series>) -> String {
        let mut plot = LinePlot::new(&self.title, &self.x_label, &self.y_label);
        plot.y_range = self.y_range;
        plot.series = series;
        plot.render()
    }
}
