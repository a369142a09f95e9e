"""What every client of a remote service shares: one rate limiter (`ratelimit`) and one
back-off policy for retries (`retry`)."""
