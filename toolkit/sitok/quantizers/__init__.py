"""sitok.quantizers"""
