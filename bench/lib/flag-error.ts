/** A bad command-line flag of a bench program: printed as one line, and the program exits 2. */
export class FlagError extends Error {}
