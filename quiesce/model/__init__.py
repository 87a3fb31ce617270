"""The pure core: fleet, deploy record, quiet plan, verdicts, rejoin, recover. No I/O, no clock."""
