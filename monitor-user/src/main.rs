use clap::Parser;

fn main() {
    let cli = agentmon::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let code = match agentmon::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentmon: {e:#}");
            125
        }
    };
    std::process::exit(code);
}
