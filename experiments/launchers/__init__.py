"""hydra launchers of altlearn's own, for engines whose hydra plugin does not install beside today's
packages (see each module). hydra instantiates launchers only from the ``hydra_plugins`` namespace,
so each is registered there under the same name (``hydra_plugins/altlearn_launchers/``)."""
