// The live log tail of a running job's page (see the hub's web/tail.rs for the events).
