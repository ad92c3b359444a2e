//! The load generator. Scenarios, rate limiting and reports arrive with the load-testing issue;
//! for now it only says so.

fn main() {
    eprintln!("loadtest: no scenarios yet; see docs/performance.md");
}
