/**
 * `table[key]` when `key` is the table's own property. Every lookup of user text (flags, API
 * options, file contents) goes through here, so "toString" or "__proto__" never reaches
 * Object.prototype.
 */
export function own<T>(table: Readonly<Record<string, T>>, key: string): T | undefined {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}
