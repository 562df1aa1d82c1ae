//! `storekeeper token`: a bearer token for trying the APIs, signed with the
//! configured secret (or, saying so, the development one `serve` accepts).

use anyhow::{Context, Result};
use edge::{JwtKeys, Role};

use crate::cli::{TokenArgs, TokenRole};
use crate::run::DEV_JWT_SECRET;

/// Mints the token `args` describe and prints it alone on stdout.
pub fn mint(args: TokenArgs) -> Result<()> {
    let secret = match args.jwt.jwt_secret {
        Some(secret) => secret,
        None => {
            eprintln!("storekeeper: STOREKEEPER_JWT_SECRET is not set; signing with the development secret that `serve` uses on loopback");
            DEV_JWT_SECRET.to_owned()
        }
    };
    let role = match args.role {
        TokenRole::Admin => Role::Admin,
        TokenRole::Customer => {
            uuid::Uuid::parse_str(&args.sub).context("a customer token's --sub must be the customer id (a UUID)")?;
            Role::Customer
        }
    };
    println!("{}", JwtKeys::new(secret.as_bytes()).mint(&args.sub, role, chrono::Duration::hours(args.ttl_hours)));
    Ok(())
}
