//! Metrics. `workers`: the workers' own metrics on clusterd's scrape (`exposition`: SDK workers'
//! text format; `prom_client`: Node workers' prom-client cluster aggregation).

pub mod exposition;
pub mod prom_client;
pub mod workers;
