use clap::Parser;

fn main() {
    let cli = agentmon::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour only for a person at a terminal: escape codes in a journal or a log
    // file are noise to whoever reads or greps it.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    // Parsed: the values are copied, and no other user need read them any longer.
    agentmon::cli::argv::hide_and_warn();
    let code = match agentmon::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentmon: {e:#}");
            125
        }
    };
    std::process::exit(code);
}
