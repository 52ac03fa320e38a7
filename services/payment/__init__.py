"""Payment: authorizations, captures, voids and refunds, and the invoices of captured payments."""
