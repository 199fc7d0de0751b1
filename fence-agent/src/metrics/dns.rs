//! `fence_dns_*`: egress by name, read at each scrape from the resolver's counters and the
//! learned-address table (a collector: the values live where they are counted, not twice).

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// What the DNS metrics say at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DnsReading {
    pub allowed: u64,
    pub refused: u64,
    pub would_refuse: u64,
    pub upstream_failed: u64,
    pub learn_failed: u64,
    pub malformed: u64,
    pub overloaded: u64,
    pub answers_held: u64,
    pub hold_seconds_total: f64,
    pub hold_seconds_max: f64,
    pub learned_addresses: u64,
    pub evictions: u64,
}

/// Reads the DNS metrics (set once egress by name runs).
pub type DnsReader = Arc<dyn Fn() -> DnsReading + Send + Sync>;

/// The collector registered with the others; empty until [`super::Metrics::dns`] gives it a
/// reader.
#[derive(Clone, Default)]
pub struct DnsCollector(pub Arc<Mutex<Option<DnsReader>>>);

impl std::fmt::Debug for DnsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reader = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(reader) = reader else { return Ok(()) };
        let r = reader();
        let queries = [
            ("allowed", r.allowed),
            ("refused", r.refused),
            ("would-refuse", r.would_refuse),
            ("upstream-failed", r.upstream_failed),
            ("learn-failed", r.learn_failed),
            ("malformed", r.malformed),
            ("overloaded", r.overloaded),
        ];
        let help = "DNS queries of fenced identities, by what became of them";
        let mut family =
            encoder.encode_descriptor("fence_dns_queries", help, None, ConstCounter::new(0u64).metric_type())?;
        for (verdict, n) in queries {
            ConstCounter::new(n).encode(family.encode_family(&VerdictLabels { verdict })?)?;
        }
        let counters = [
            ("fence_dns_answers_held", "Allowed answers held until their addresses were in the kernel", r.answers_held),
            ("fence_dns_evictions", "Learned addresses evicted by the caps", r.evictions),
        ];
        for (name, help, n) in counters {
            let c = ConstCounter::new(n);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let c = ConstCounter::new(r.hold_seconds_total);
        c.encode(encoder.encode_descriptor(
            "fence_dns_answer_hold_seconds",
            "Time allowed answers were held (learning included)",
            None,
            c.metric_type(),
        )?)?;
        let g = ConstGauge::new(r.hold_seconds_max);
        g.encode(encoder.encode_descriptor(
            "fence_dns_answer_hold_max_seconds",
            "The longest an answer was held",
            None,
            g.metric_type(),
        )?)?;
        let g = ConstGauge::new(r.learned_addresses as i64);
        g.encode(encoder.encode_descriptor(
            "fence_dns_learned_addresses",
            "Addresses the identities learned, not expired yet",
            None,
            g.metric_type(),
        )?)
    }
}
