//! Reading values off a Prometheus text page.

/// The samples of `metric` on the lines that also carry `label` (such as `queue="…"`; an empty
/// `label` takes every line of `metric`).
pub fn samples<'a>(
    page: &'a str,
    metric: &'a str,
    label: &'a str,
) -> impl Iterator<Item = f64> + 'a {
    page.lines()
        .filter(move |line| line.split(['{', ' ']).next() == Some(metric) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The first sample of `metric` with `label`, if the page has one.
pub fn sample(page: &str, metric: &str, label: &str) -> Option<f64> {
    samples(page, metric, label).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_metric_and_label() {
        let page = "# TYPE a counter\na_total 3\na_total_more 9\nq{queue=\"x\",role=\"work\"} 2\nq{queue=\"y\",role=\"work\"} 5\n";
        assert_eq!(sample(page, "a_total", ""), Some(3.0));
        assert_eq!(sample(page, "q", "queue=\"y\""), Some(5.0));
        assert_eq!(samples(page, "q", "role=\"work\"").sum::<f64>(), 7.0);
        assert_eq!(sample(page, "missing", ""), None);
    }
}
