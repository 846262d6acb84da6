"""Wire adapters: translate between protocols and process-image events. No grid logic here."""
