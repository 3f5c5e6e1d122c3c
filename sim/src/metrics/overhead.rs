//! Bandwidth overhead of cover traffic: what clients (and mixes, for their loops) send, by
//! class, inside the window.

use serde::Serialize;

use crate::trace::{Kind, TraceEvent};

#[derive(Clone, Debug, Default, Serialize)]
pub struct OverheadReport {
    pub real_bytes: u64,
    pub cover_bytes: u64,
    pub other_bytes: u64,
    /// cover / real (NaN without real traffic).
    pub cover_per_real: f64,
    /// cover / everything sent.
    pub cover_share: f64,
}

#[derive(Debug, Default)]
pub struct Overhead {
    report: OverheadReport,
}

impl Overhead {
    pub fn observe(&mut self, event: &TraceEvent, in_window: bool) {
        if event.kind != Kind::Send || !in_window {
            return;
        }
        let bytes = u64::from(event.size_bytes);
        let report = &mut self.report;
        if event.class.is_cover() {
            report.cover_bytes += bytes;
        } else if event.class == crate::trace::Class::Real {
            report.real_bytes += bytes;
        } else {
            report.other_bytes += bytes;
        }
    }

    pub fn report(&self) -> OverheadReport {
        let mut report = self.report.clone();
        let all = report.real_bytes + report.cover_bytes + report.other_bytes;
        report.cover_per_real = match report.real_bytes {
            0 => f64::NAN,
            real => report.cover_bytes as f64 / real as f64,
        };
        report.cover_share = match all {
            0 => f64::NAN,
            all => report.cover_bytes as f64 / all as f64,
        };
        report
    }
}
