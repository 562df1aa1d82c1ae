//! `storekeeper operators add|remove|list`: the people who may sign in
//! for an admin token (`POST /v1/auth/token`), so that no operator needs
//! the signing secret.

use std::io::BufRead;

use anyhow::{Context, Result, bail};

use crate::cli::OperatorsAction;

pub async fn run(action: OperatorsAction) -> Result<()> {
    let db = match &action {
        OperatorsAction::Add { db, .. } | OperatorsAction::Remove { db, .. } | OperatorsAction::List { db } => db,
    };
    let (_cluster, pool) = db.open(false).await?;
    let operators = commands::Operators::new(pool.clone(), commands::PasswordStore::new(pool));
    match action {
        OperatorsAction::Add { email, .. } => {
            let password = match std::env::var("STOREKEEPER_OPERATOR_PASSWORD") {
                Ok(password) => password,
                Err(_) => {
                    eprintln!("password for {email} (one line on standard input):");
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).context("read the password")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let id = operators.add(&email, password).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("operator {email} added: its tokens' subject, the actor of what it does, is {}", commands::Operator::subject(id));
        }
        OperatorsAction::Remove { email, .. } => {
            if !operators.remove(&email).await.context("remove the operator")? {
                bail!("no operator has the email {email}");
            }
            println!("operator {email} removed; a token it holds lasts out its 15 minutes");
        }
        OperatorsAction::List { .. } => {
            let all = operators.list().await.context("list the operators")?;
            println!("{:<40} {:<50} added", "email", "subject");
            for operator in &all {
                println!(
                    "{:<40} {:<50} {}",
                    operator.email,
                    commands::Operator::subject(operator.id),
                    operator.created_at.format("%Y-%m-%d %H:%M")
                );
            }
            println!("{} operator(s)", all.len());
        }
    }
    Ok(())
}
