//! Placeholder; the chaos demo comes next.
fn main() {}
