"""Server plumbing shared by the three medseg servers: configuration, error mapping,
data-root confinement, the device/CPU work queue, streaming calls, health, reflection and
graceful shutdown. Servicers stay thin: they call plain science functions through this."""
