// Package migrations holds the MongoDB schema of the mongo store as golang-migrate
// command files, embedded so the root binary carries its own schema and applies it on
// start (root/store/mongo.Migrate).
//
// Each N_name.up.json is a JSON array of database commands run in order; the matching
// .down.json undoes it. The store relies on the unique indexes created here for
// address uniqueness within a collection and for job names and instance numbers, so a
// new index that the store depends on belongs in a new migration, never in code.
package migrations

import "embed"

// FS holds the migration files (*.json at the top level).
//
//go:embed *.json
var FS embed.FS
