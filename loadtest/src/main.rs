//! `ember-loadtest`: the load generator (issue 6 builds it out).

fn main() {
    eprintln!("ember-loadtest: not implemented yet; see issue 6");
    std::process::exit(2);
}
