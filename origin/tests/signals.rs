//! The `origin` binary stops on SIGTERM as on Ctrl-C.

#[path = "../../tests/support/sigterm.rs"]
mod sigterm;

#[tokio::test]
async fn sigterm_stops_the_origin_cleanly() {
    sigterm::stops_on_sigterm(
        env!("CARGO_BIN_EXE_origin"),
        &["serve", "--listen", "127.0.0.1:0"],
        "origin serving on",
    )
    .await;
}
