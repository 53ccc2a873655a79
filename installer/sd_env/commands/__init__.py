"""One module per command: its argument parser (`add(sub, parents)`) and its handler, thin over the
workflows and checks below; common.py holds what they share (parent parsers, the manifest and home a
command works on, the target, the table-or-JSON report). cli.py only assembles them. May import every
package (workflows, fleet, bundle, verify, patching, target, core, system) and the root modules; nothing
but cli imports commands.
"""
